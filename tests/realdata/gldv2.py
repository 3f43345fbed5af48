"""Google Landmarks v2 csv files with the published layout and quirks, over given photos.

Published files: `train.csv` (id: 16 hex chars, url, landmark_id), `train_clean.csv` (landmark_id,
images: the landmark's clean image ids separated by spaces), `train_label_to_category.csv`
(landmark_id, category: a Wikimedia Commons category URL, percent-encoded or raw non-ASCII).
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

# landmark_id → category URL as the file has it, and the alt text the source derives from it
CATEGORIES = {
    1: ("http://commons.wikimedia.org/wiki/Category:Z%C3%BCrich_Opera_House", "Zürich Opera House"),
    2: ("http://commons.wikimedia.org/wiki/Category:Sagrada_Família", "Sagrada Família"),
    3: ("http://commons.wikimedia.org/wiki/Category:%E6%B8%85%E6%B0%B4%E5%AF%BA", "清水寺"),
    4: ("http://commons.wikimedia.org/wiki/Category:Pont_d%27Avignon", "Pont d'Avignon"),
}


def image_id(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()[:16]


def write_gldv2(folder: Path, photos: dict[str, str], missing_url: str) -> tuple[dict[str, str], dict]:
    """photos: name → url. Returns the catalog keys of a `gldv2` source and the expected counts and alt
    texts (image id → alt text) of the images that download."""
    folder = folder / "gldv2"
    folder.mkdir(parents=True, exist_ok=True)
    train = [(image_id(name), url, 1 + i % len(CATEGORIES)) for i, (name, url) in enumerate(sorted(photos.items()))]
    dropped = (image_id("not-clean"), next(iter(photos.values())) + "?v=2", 1)  # in train.csv, not in the clean set
    dead = (image_id("dead"), missing_url, 2)
    with open(folder / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "url", "landmark_id"])
        w.writerows([*train, dropped, dead])
    clean: dict[int, list[str]] = {}
    for iid, _, landmark in [*train, dead]:
        clean.setdefault(landmark, []).append(iid)
    with open(folder / "train_clean.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["landmark_id", "images"])
        w.writerows([(landmark, " ".join(ids)) for landmark, ids in sorted(clean.items())])
    with open(folder / "train_label_to_category.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["landmark_id", "category"])
        w.writerows([(landmark, url) for landmark, (url, _) in CATEGORIES.items()])
    keys = {"train_csv": str(folder / "train.csv"), "clean_csv": str(folder / "train_clean.csv"),
            "label_to_category_csv": str(folder / "train_label_to_category.csv")}
    alt = {iid: CATEGORIES[landmark][1] for iid, _, landmark in train}
    return keys, {"input_rows": len(train) + 2, "filtered": 1, "rows": len(train) + 1, "successes": len(train),
                  "failures": 1, "alt_text": alt}
