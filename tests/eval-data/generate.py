#!/usr/bin/env python3
"""Regenerates the tiny synthetic eval dataset in this folder (stdlib only, deterministic):
images/img_<id>.png (48x48 coloured shapes), a Karpathy-format captions file and VQAv2-format
questions/annotations for train2014 and val2014. Run: python3 tests/eval-data/generate.py"""
import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = 48
COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40)}
BACKGROUNDS = {"white": (250, 250, 250), "black": (15, 15, 15), "gray": (128, 128, 128)}
# (id, shape, colour, count, background)
IMAGES = [
    (1, "square", "red", 1, "white"), (2, "circle", "blue", 2, "white"), (3, "square", "green", 3, "black"),
    (4, "circle", "yellow", 1, "gray"), (5, "square", "blue", 2, "gray"), (6, "circle", "red", 3, "black"),
    (7, "square", "yellow", 2, "white"), (8, "circle", "green", 1, "black"), (9, "square", "red", 2, "gray"),
    (10, "circle", "green", 3, "white"), (11, "square", "blue", 1, "black"), (12, "circle", "yellow", 2, "white"),
]
NUM_WORDS = {1: "one", 2: "two", 3: "three"}


def png(pixels):
    raw = b"".join(b"\x00" + bytes(v for px in row for v in px) for row in pixels)

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", SIZE, SIZE, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def draw(shape, colour, count, background):
    px = [[BACKGROUNDS[background]] * SIZE for _ in range(SIZE)]
    r = 6
    for k in range(count):
        cx, cy = 10 + 14 * k, 12 + 12 * k
        for y in range(SIZE):
            for x in range(SIZE):
                inside = (abs(x - cx) <= r and abs(y - cy) <= r) if shape == "square" else (x - cx) ** 2 + (y - cy) ** 2 <= r * r
                if inside:
                    px[y][x] = COLORS[colour]
    return px


def captions(shape, colour, count, background):
    n = NUM_WORDS[count]
    plural = shape + ("s" if count > 1 else "")
    return [
        f"A {colour} {shape} on a {background} background." if count == 1 else f"{n.capitalize()} {colour} {plural} on a {background} background.",
        f"{n.capitalize()} {plural}, all {colour}.",
        f"A simple drawing of {n} {colour} {plural}",
        f"The {background} picture shows {count} {plural} (colored {colour}).",
        f"there's {'a' if count == 1 else n} {colour} {plural} here",
    ]


def answers(base, variants):
    out = [base] * 7 + variants
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(out[:10])]


def vqa_split(subtype, image_ids):
    questions, annotations = [], []
    for img in IMAGES:
        iid, shape, colour, count, bg = img
        if iid not in image_ids:
            continue
        qa = [
            ("What color is the shape?", "what color is the", "other", answers(colour, [colour.capitalize(), f"{colour}.", "dark " + colour])),
            ("How many shapes are there?", "how many", "number", answers(str(count), [NUM_WORDS[count], NUM_WORDS[count], f"{count}."])),
            ("Is the background white?", "is the", "yes/no", answers("yes" if bg == "white" else "no", ["yes" if bg == "white" else "no"] * 3)),
        ]
        for k, (q, qtype, atype, ans) in enumerate(qa):
            qid = iid * 10 + k
            questions.append({"image_id": iid, "question": q, "question_id": qid})
            annotations.append({"question_type": qtype, "multiple_choice_answer": ans[0]["answer"], "answers": ans,
                                "image_id": iid, "answer_type": atype, "question_id": qid})
    meta = {"info": {"description": "flamingo-serve synthetic test data"}, "license": {}, "data_subtype": subtype}
    q = dict(meta, task_type="Open-Ended", data_type="mscoco", questions=questions)
    a = dict(meta, data_type="mscoco", annotations=annotations)
    return q, a


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def main():
    os.makedirs(os.path.join(HERE, "images"), exist_ok=True)
    karpathy = []
    sent_id = 0
    for iid, shape, colour, count, bg in IMAGES:
        name = f"img_{iid}.png"
        with open(os.path.join(HERE, "images", name), "wb") as f:
            f.write(png(draw(shape, colour, count, bg)))
        sents = []
        for raw in captions(shape, colour, count, bg):
            sents.append({"tokens": raw.lower().replace(".", "").replace(",", "").split(), "raw": raw, "imgid": iid, "sentid": sent_id})
            sent_id += 1
        karpathy.append({"filepath": "images", "sentids": [s["sentid"] for s in sents], "filename": name, "imgid": iid,
                         "split": "train" if iid <= 8 else "test", "sentences": sents, "cocoid": iid})
    write_json(os.path.join(HERE, "dataset_coco.json"), {"images": karpathy, "dataset": "coco"})
    for subtype, ids in (("train2014", range(1, 9)), ("val2014", range(9, 13))):
        q, a = vqa_split(subtype, set(ids))
        write_json(os.path.join(HERE, f"v2_OpenEnded_mscoco_{subtype}_questions.json"), q)
        write_json(os.path.join(HERE, f"v2_mscoco_{subtype}_annotations.json"), a)


if __name__ == "__main__":
    main()
