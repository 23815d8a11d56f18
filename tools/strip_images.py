"""Remove image data from notebook outputs, keeping text (so strict nbval still compares it).

Faces must never be committed (UTKFace is licensed for non-commercial research and the images
belong to their owners), and weight images add nothing nbval can check.
Usage: python tools/strip_images.py notebooks/*.ipynb
"""
import json
import sys

IMAGE_PREFIXES = ("image/", "application/pdf")


def strip_notebook(nb: dict) -> int:
    """Drop image entries from every output of every code cell; return how many were dropped.

    Also drops the widget state nbconvert can save in the notebook's metadata (it holds the
    browsers' PNGs, faces included) and the execution timestamps in cell metadata (diff churn).
    """
    dropped = 0
    if nb.get("metadata", {}).pop("widgets", None) is not None:
        dropped += 1
    for cell in nb.get("cells", []):
        cell.get("metadata", {}).pop("execution", None)
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            for key in [k for k in data if k.startswith(IMAGE_PREFIXES)]:
                del data[key]
                dropped += 1
            if "data" in output and not data:
                data["text/plain"] = ""  # an output must keep a data entry to stay valid
    return dropped


def main(paths):
    for path in paths:
        with open(path, encoding="utf-8") as f:
            nb = json.load(f)
        dropped = strip_notebook(nb)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(nb, f, indent=1, ensure_ascii=False)
            f.write("\n")
        print(f"{path}: {dropped} image output(s) or widget state(s) stripped")


if __name__ == "__main__":
    main(sys.argv[1:])
