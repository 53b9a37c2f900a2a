"""Golden outputs of LLaVA's own prompt code (llava-torch 1.2.2.post1 = haotian-liu/LLaVA v1.2.2; its
conversation.py, mm_utils.py and train.py's preprocess_v1/preprocess_plain are the DualSpeed fork's) on fixed
conversations, with the Llama-style SentencePiece fixture (tests/fixtures/llama_sp) under both `legacy` settings.

    bash scripts/crosscheck/setup.sh                      # the side venv (prints its path)
    <side venv>/bin/python scripts/crosscheck/llava_template_golden.py

writes tests/golden/llava/template.json (or: ... llava_template_golden.py TOKENIZER_DIR OUT.json); tests/test_golden_llava_template.py compares the project against it."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _side import GOLDEN, ROOT, provenance, stub_wandb  # noqa: E402

stub_wandb()
import transformers  # noqa: E402
from llava import conversation as conversation_lib  # noqa: E402
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX  # noqa: E402
from llava.mm_utils import tokenizer_image_token  # noqa: E402
from llava.train import train as llava_train  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "llama_sp"


def h(v):
    return {"from": "human", "value": v}


def g(v):
    return {"from": "gpt", "value": v}


SFT = {
    "single_image": [h("<image>\nWhat is the colour of the object at the top left?"), g("The object is red.")],
    "image_after_question": [h("How many objects are there?\n<image>"), g("3")],
    "multi_turn_image": [h("<image>\nDescribe the image in detail."), g("A cat sitting on a mat next to a dog."),
                         h("How many objects are there?"), g("There are three objects in the image."),
                         h("Is there a person in the image?"), g("No.")],
    "text_only": [h("What is shown in this picture?"), g("A summary of the photo."),
                  h("Answer the question using a single word or phrase."), g("Yes")],
    "answer_leading_spaces": [h("<image>\nIs there a person in the image?"), g("  Yes.")],
    "answer_newline_digits": [h("<image>\nList the fruit."), g("12 apples\n3 pears; 2024-05-01")],
    "answer_unicode": [h("<image>\nWhat does it say?"), g("café ✓")],
    "question_trailing_space": [h("<image>\nWhat is shown in this picture? "), g("A dog."),
                                h("And the colour?"), g("red")],
}
PLAIN = {
    "caption": [h("<image>\nRender a clear and concise summary of the photo."), g("a cat sitting on a mat")],
    "caption_digits": [h("<image>"), g("12 apples, 3 pears.")],
}
GENERATE = {
    "question_with_image": "<image>\nWhat is the colour of the object at the top left?",
    "question_text_only": "How many objects are there?",
}


def load_tokenizer(legacy: bool, where: Path = FIXTURE):
    # as llava/train/train.py loads it (use_fast=False, right padding) and sets pad for v1 (pad = unk)
    tok = transformers.AutoTokenizer.from_pretrained(where, use_fast=False, legacy=legacy,
                                                     model_max_length=2048, padding_side="right")
    tok.pad_token = tok.unk_token
    return tok


def main(where: Path = FIXTURE, dest: Path = GOLDEN / "llava" / "template.json") -> None:
    args = llava_train.DataArguments(is_multimodal=True)
    args.mm_use_im_start_end = False
    cases = []
    for legacy in (True, False):
        tok = load_tokenizer(legacy, where)
        for name, conv in SFT.items():
            conversation_lib.default_conversation = conversation_lib.conv_templates["v1"]
            has_image = any("<image>" in t["value"] for t in conv)
            sources = llava_train.preprocess_multimodal([copy.deepcopy(conv)], args) if has_image else [copy.deepcopy(conv)]
            # the prompt text the way preprocess_v1 builds it, kept for reading the golden file
            c = conversation_lib.default_conversation.copy()
            for j, turn in enumerate(sources[0]):
                c.append_message(c.roles[j % 2], turn["value"])
            out = llava_train.preprocess_v1(sources, tok, has_image=has_image)
            ids, labels = out["input_ids"][0].tolist(), out["labels"][0].tolist()
            cases.append({"name": name, "template": "vicuna_v1", "legacy": legacy, "conversations": conv,
                          "prompt": c.get_prompt(), "input_ids": ids, "labels": labels,
                          "llava_masked_all": all(x == IGNORE_INDEX for x in labels)})
        for name, conv in PLAIN.items():
            conversation_lib.default_conversation = conversation_lib.conv_templates["plain"]
            out = llava_train.preprocess_plain([copy.deepcopy(conv)], tok)
            cases.append({"name": name, "template": "plain", "legacy": legacy, "conversations": conv,
                          "input_ids": out["input_ids"][0].tolist(), "labels": out["labels"][0].tolist(),
                          "llava_masked_all": False})
        for name, question in GENERATE.items():
            # llava/eval/model_vqa_loader.py: conv_templates["vicuna_v1"], the question, then an empty answer
            c = conversation_lib.conv_templates["vicuna_v1"].copy()
            c.append_message(c.roles[0], question)
            c.append_message(c.roles[1], None)
            prompt = c.get_prompt()
            cases.append({"name": name, "template": "vicuna_v1_generation", "legacy": legacy,
                          "conversations": [h(question), g("")], "prompt": prompt,
                          "input_ids": tokenizer_image_token(prompt, tok), "labels": None, "llava_masked_all": False})
    dest.parent.mkdir(parents=True, exist_ok=True)
    doc = {"provenance": provenance(
        "haotian-liu/LLaVA as llava-torch 1.2.2.post1 (files identical to dingkun-zhang/DualSpeed@99337cb)", None,
        "python scripts/crosscheck/llava_template_golden.py",
        tokenizer=f"{where.relative_to(ROOT) if where.is_relative_to(ROOT) else where} (tokenizer.model only), "
                  "use_fast=False, pad = unk",
        image_token_index=IMAGE_TOKEN_INDEX, ignore_index=IGNORE_INDEX,
        functions=["llava.train.train.preprocess_multimodal", "preprocess_v1", "preprocess_plain",
                   "llava.conversation.conv_templates['v1'|'plain'|'vicuna_v1']", "llava.mm_utils.tokenizer_image_token"]),
        "cases": cases}
    dest.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    masked = [(c["name"], c["legacy"]) for c in cases if c["llava_masked_all"]]
    print(f"wrote {dest}: {len(cases)} cases; LLaVA masked entirely (tokenization mismatch): {masked}")


if __name__ == "__main__":
    # optional: another tokenizer directory (tokenizer.model + tokenizer_config.json) and output file, e.g. a
    # Llama-2 vocabulary for a one-off check (docs/recipes.md)
    main(*(Path(a) for a in sys.argv[1:3]))
