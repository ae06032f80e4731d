"""diffens_demo: the whole pipeline on synthetic phantoms (dataset, plan, train, predict, evaluate, report).

    demo/phantom.py, demo/dataset.py   the synthetic brain phantoms and the demo dataset (diffens_make_demo_dataset)
    demo/pipeline.py                   run_demo: every step of the demo, resumable; demo/report.py its table
"""
