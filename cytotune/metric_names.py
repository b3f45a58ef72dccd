"""The names of what trials report and what is recorded of them, and the study's objective.

A module without imports, so that every layer (trainers, the study's Ray side, tracking, reports, the
command line) reads the names from here without loading the trainers.
"""

# What a trainer reports at each evaluation: the step, the last step of its schedule (LoRA and the probe),
# the mean train loss since the last report, the validation accuracy and the best one so far.
STEP = "step"
LAST_STEP = "last_step"
TRAIN_LOSS = "train_loss"
VAL_ACC = "val_acc"
BEST_VAL_ACC = "best_val_acc"
# 1 in the study's final report of a trial that ran its whole schedule (the report with the final metrics).
DONE_TRIAL = "done_trial"
# 1 in the one report a resumed trial makes instead of training again: the end its MLflow run recorded before
# the driver died (tracking/replay.py).
REPLAYED = "replayed"
# In a replayed report of a trial outside a pack: its validation accuracies as MLflow recorded them, as
# [step, value] pairs in the order reported, so the scheduler records the rungs the trial reached before the
# driver died.
VAL_HISTORY = "val_acc_history"
# Final test metrics, at the best-validation step (TrialResult's fields of the same names).
TEST_ACC = "test_acc"
TEST_BALANCED_ACC = "test_balanced_acc"
TEST_MACRO_F1 = "test_macro_f1"
TEST_NLL = "test_nll"
TEST_ECE = "test_ece"
# What a study maximises: VAL_ACC as trials report it (the searcher and the scheduler watch it); selection
# compares BEST_VAL_ACC, the best each trial reached, averaged over seeds.
OBJECTIVE = VAL_ACC
OBJECTIVE_MODE = "max"
