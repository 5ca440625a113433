"""Validate a model package on a public labelled folder and check its record against scikit-learn on the same scores.

The record the viewer shows beside a map comes from `slidestream models validate`; this re-runs that validation
(`inference.validation.validate`) and, separately, scores the same tiles through the same tile path
(`inference.validation.score_folder`) and hands the scores to scikit-learn. The AUC, sensitivity and specificity must
agree, or the script exits 1. No tile ships with the repository: fetch them first (issue #27 used these):

- CRC-VAL-HE-7K (Kather et al. 2018, doi:10.5281/zenodo.1214456, CC BY 4.0), whole from Zenodo, or the 32 tiles
  (4 per class, no BACK) in github.com/Dyke-F/GPT-4V-In-Context-Learning at 55bb6d7b, data/CRC-VAL-HE-7K-png/.
  Put each class in its own subfolder (TUM/, NORM/, ...) and map them in the folder's labels.json:
  {"TUM": "colorectal adenocarcinoma epithelium", "NORM": "normal colon mucosa", "STR": "cancer-associated stroma",
   "LYM": "lymphocytes", "ADI": "adipose", "DEB": "debris", "MUC": "mucus", "MUS": "smooth muscle"}

    python bench/validate_public_tiles.py /path/to/crc-val-he-7k --spacing 0.5 --describe "CRC-VAL-HE-7K ..."

Without --package it validates the default model (`inference.model.default_package()`); --write stores the record
where `read_record` finds it, --scores writes each tile's score for anyone who wants to check by hand.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from inference.model import default_package
from inference.packages import load, read_package
from inference.validation import record_lines, score_folder, validate, write_record

AGREEMENT = 1e-9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="one subfolder of tiles per class, mapped in its labels.json")
    parser.add_argument("--package", type=Path, help="a package folder (default: the default model)")
    parser.add_argument("--spacing", type=float, help="the tiles' microns per pixel (default: each tile is the model's field)")
    parser.add_argument("--describe", default="", help="source, cohort and licence of the tiles, kept in the record")
    parser.add_argument("--labels", type=Path, help="JSON mapping subfolder names to class names (default: FOLDER/labels.json)")
    parser.add_argument("--write", action="store_true", help="write the record beside the package's config")
    parser.add_argument("--scores", type=Path, help="CSV of tile, label, score")
    args = parser.parse_args()

    package = read_package(args.package) if args.package else default_package()
    labels = json.loads(args.labels.read_text()) if args.labels else None
    started = time.perf_counter()
    record = validate(package, args.folder, labels=labels, spacing=args.spacing, data=args.describe)
    validated = time.perf_counter() - started
    scored = score_folder(package, load(package), args.folder, labels=labels, spacing=args.spacing)

    truth, score = scored.positive, scored.score
    flagged = score >= package.threshold
    sklearn_auc = float(roc_auc_score(truth, score))
    sensitivity = float((flagged & truth).sum() / truth.sum())
    specificity = float((~flagged & ~truth).sum() / (~truth).sum())
    agree = (abs(record.auc - sklearn_auc) <= AGREEMENT and record.sensitivity == sensitivity
             and record.specificity == specificity and record.n == len(score))

    for label, value in record_lines(record):
        print(f"{label:<45} {value}")
    print(f"{'scikit-learn ROC AUC (same scores)':<45} {sklearn_auc:.6f} (record {record.auc:.6f}): {'agree' if agree else 'DIFFER'}")
    print(f"{'by hand at the threshold':<45} sensitivity {sensitivity:.1%}, specificity {specificity:.1%}")
    print(f"{'positive scores (min / median)':<45} {np.min(score[truth]):.3f} / {np.median(score[truth]):.3f}")
    print(f"{'validation time':<45} {validated:.1f} s for {record.n} tiles (model load included)")
    if args.scores:
        with args.scores.open("w", newline="") as out:
            rows = csv.writer(out)
            rows.writerow(["tile", "label", "score"])
            rows.writerows((path, label, f"{value:.6f}") for path, label, value in zip(scored.files, scored.labels, score))
    if args.write:
        print(f"wrote {write_record(package, record)}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
