"""`--recipe` presets for the lm task: cell sizes, regularisation and schedule chosen together.

A recipe only changes defaults: any flag given on the command line still wins, so
`--recipe small --epochs 5` is the small recipe cut to five epochs. The README's training section says
what each costs and what it reached. The values follow the literature, scaled to the model size:
Zaremba et al. 2014 (sizes), Gal & Ghahramani 2016 (locked dropout), Merity et al. 2017 (AWD-LSTM:
embedding dropout, weight drop, NT-ASGD, SGD at lr 30 with clipping 0.25).
"""

from __future__ import annotations

from typing import Any

# The shared core of every recipe: a tied LSTM with locked dropout instead of per-step dropout.
_BASE: dict[str, Any] = {"cell": "lstm", "tied": True, "dropout": 0.0, "clip": 0.25}

RECIPES: dict[str, dict[str, Any]] = {
    # The shipped lm's size (2x200, 10.8 MB, the same serving cost) with light AWD-style regularisation,
    # AdamW decayed on plateau and averaged once validation stalls: the candidate for a better shipped lm.
    "small": {
        **_BASE,
        "layers": 2,
        "hidden": 200,
        "dropout_embedding": 0.05,
        "dropout_input": 0.2,
        "dropout_hidden": 0.1,
        "dropout_output": 0.2,
        "weight_drop": 0.2,
        "optimizer": "adamw",
        "lr": 3e-3,
        "weight_decay": 0.01,
        "batch_size": 20,
        "bptt": 35,
        "epochs": 40,
        "lr_decay": 0.5,
        "patience": 4,
        "nonmono": 2,
    },
    # Zaremba et al.'s medium size (2x650, about 53 MB: too big for the 15 MB serving budget) with
    # stronger regularisation; about 9x the small recipe's time per epoch.
    "medium": {
        **_BASE,
        "layers": 2,
        "hidden": 650,
        "dropout_embedding": 0.1,
        "dropout_input": 0.4,
        "dropout_hidden": 0.25,
        "dropout_output": 0.4,
        "weight_drop": 0.3,
        "optimizer": "adamw",
        "lr": 2e-3,
        "weight_decay": 0.01,
        "batch_size": 20,
        "bptt": 35,
        "epochs": 60,
        "lr_decay": 0.5,
        "patience": 4,
        "nonmono": 3,
    },
    # AWD-LSTM's regularisation and schedule (WikiText-2 settings of Merity et al.'s code): SGD at lr 30,
    # NT-ASGD with nonmono 5, batch 80, bptt 70; a uniform 3x400 tied core (the paper's middle layer is
    # 1150 wide, which this model family cannot express); variable-length BPTT and AR/TAR (alpha 2, beta 1).
    "awd": {
        **_BASE,
        "layers": 3,
        "hidden": 400,
        "dropout_embedding": 0.1,
        "dropout_input": 0.65,
        "dropout_hidden": 0.2,
        "dropout_output": 0.4,
        "weight_drop": 0.5,
        "optimizer": "sgd",
        "lr": 30.0,
        "weight_decay": 1.2e-6,
        "batch_size": 80,
        "bptt": 70,
        "epochs": 750,
        "lr_decay": 1.0,
        "patience": 750,
        "nonmono": 5,
        "variable_bptt": True,
        "ar": 2.0,
        "tar": 1.0,
    },
}
