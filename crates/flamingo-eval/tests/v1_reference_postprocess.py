"""OpenFlamingo v1's eval post-processing (open_flamingo/eval/evaluate.py at 68d51df), written
from its description, on token ids as v1 sees them:

1. generation ends at the first <|endofchunk|> (`eos_token_id = eoc_token_id`); `</s>` does not
   end it;
2. `tokenizer.batch_decode(outputs, skip_special_tokens=True)` with the reference's saved
   tokenizer (LLaMA SentencePiece pieces; `clean_up_tokenization_spaces` false in its config);
3. captions: `postprocess_captioning_generation(out).replace('"', "")`, i.e. the text before the
   first "Output"; VQA: `postprocess_vqa_generation(out)`, i.e. `re.split("Question|Answer", out, 1)[0]`.

stdin: {"tokenizer": "<tokenizer.json>", "items": [{"task": "coco"|"vqav2", "ids": [..]}]}
stdout: a JSON list, one {"prediction": v1's, "text": the ids decoded with the special tokens
spelled out, "decoded": the ids decoded without them} per item. Standard library only.
"""

import json
import re
import sys


def load(path):
    t = json.load(open(path, encoding="utf-8"))
    pieces = {i: p for p, i in t["model"]["vocab"].items()}
    special = set()
    for a in t["added_tokens"]:
        pieces[a["id"]] = a["content"]
        if a["special"]:
            special.add(a["id"])
    eoc = [a["id"] for a in t["added_tokens"] if a["content"] == "<|endofchunk|>"]
    assert len(eoc) == 1, "no <|endofchunk|> in the tokenizer"
    return pieces, special, eoc[0]


def decode(ids, pieces, special, keep_special=False):
    """SentencePiece decoding of the non-special pieces: '▁' is a space, <0xNN> pieces are bytes
    (a run of them that is not valid UTF-8 gives one U+FFFD per byte), one leading space dropped.
    keep_special: special tokens are spelled as their text instead of skipped (what a server
    shows when it does not skip them)."""
    out, run = [], []

    def flush():
        if run:
            b = bytes(run)
            try:
                out.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                out.append("\ufffd" * len(run))
            run.clear()

    for i in ids:
        if i in special:
            if keep_special:
                flush()
                out.append(pieces[i])
            continue
        p = pieces[i]
        m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", p)
        if m:
            run.append(int(m.group(1), 16))
            continue
        flush()
        out.append(p.replace("\u2581", " "))
    flush()
    s = "".join(out)
    return s[1:] if s.startswith(" ") else s


def v1_prediction(task, ids, pieces, special, eoc):
    if eoc in ids:
        ids = ids[: ids.index(eoc) + 1]
    text = decode(ids, pieces, special)
    if task == "coco":
        return text.split("Output", 1)[0].replace('"', "")
    return re.split("Question|Answer", text, 1)[0]


def main():
    req = json.load(sys.stdin)
    pieces, special, eoc = load(req["tokenizer"])
    json.dump(
        [
            {
                "prediction": v1_prediction(it["task"], it["ids"], pieces, special, eoc),
                "text": decode(it["ids"], pieces, special, keep_special=True),
                "decoded": decode(it["ids"], pieces, special),
            }
            for it in req["items"]
        ],
        sys.stdout,
    )


if __name__ == "__main__":
    main()
