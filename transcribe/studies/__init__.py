"""Study tools: they read the core (training, evaluation, run folders, predictions files) to
measure and diagnose it, and the core never imports them.

    methodology  learning curves, the underfit/overfit/defect diagnosis, the learning-rate sweep
    search       hyperparameter search with Optuna
    checks       the debugging checks of the Practical Methodology chapter as a pass/fail table
    bench        training, inference and loader throughput
    baseline     an off-the-shelf OCR engine through the same evaluation
    compare      several predictions files on one accuracy-vs-coverage plot
"""
