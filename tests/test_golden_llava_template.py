"""The prompt, its ids and its labels against LLaVA's own code (tests/golden/llava/template.json, written by
scripts/crosscheck/llava_template_golden.py in a side venv), with a Llama-style SentencePiece tokenizer that ships
only tokenizer.model, loaded as the real recipes load Vicuna's, under both `legacy` settings."""
import json
from pathlib import Path

import pytest

from dualspeed.data.conversation import IGNORE, IMAGE_TOKEN, build_prompt, image_first
from dualspeed.models.tokenizer import add_llava_tokens, load_tokenizer

HERE = Path(__file__).parent
FIXTURE = HERE / "fixtures" / "llama_sp"
GOLDEN = json.loads((HERE / "golden" / "llava" / "template.json").read_text())
CASES = GOLDEN["cases"]


def _tok(legacy: bool):
    tok = load_tokenizer(FIXTURE, legacy=legacy)
    add_llava_tokens(tok)
    return tok


@pytest.fixture(scope="module")
def toks():
    return {legacy: _tok(legacy) for legacy in (True, False)}


def _reference_ids(case, tok):
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    return [image_id if t == GOLDEN["provenance"]["image_token_index"] else t for t in case["input_ids"]]


def _ours(case, tok):
    conv = image_first(case["conversations"])
    if case["template"] == "vicuna_v1_generation":
        return build_prompt(tok, conv, "vicuna_v1", for_generation=True)
    return build_prompt(tok, conv, case["template"], plain_end="newline")


def test_the_fixture_loads_the_slow_sentencepiece_path(toks):
    assert not (FIXTURE / "tokenizer.json").exists()  # tokenizer.model only, as Vicuna v1.5 ships
    for legacy, tok in toks.items():
        assert type(tok).__name__ == "LlamaTokenizer" and tok.legacy is legacy
        assert tok.pad_token == tok.unk_token  # LLaVA's v1 pad
    assert json.loads((FIXTURE / "tokenizer_config.json").read_text())["legacy"] is False


@pytest.mark.parametrize("case", CASES, ids=[f"{c['name']}-legacy{c['legacy']}" for c in CASES])
def test_ids_and_labels_equal_llavas(case, toks):
    tok = toks[case["legacy"]]
    ids, labels = _ours(case, tok)
    assert ids == _reference_ids(case, tok), tok.convert_ids_to_tokens(ids)
    if case["labels"] is None:
        return
    if not case["llava_masked_all"]:
        assert labels == [IGNORE if x == IGNORE else y for x, y in zip(case["labels"], ids)]
        return
    # LLaVA's length arithmetic failed here ("tokenization mismatch") and masked the sample; what it means to
    # supervise is each answer as tokenised in context, and its </s>
    answers = [t["value"] for t in case["conversations"][1::2]]
    spans, cur = [], []
    for t, l in zip(ids, labels):
        if l != IGNORE:
            cur.append(t)
        elif cur:
            spans.append(cur)
            cur = []
    spans += [cur] if cur else []
    assert len(spans) == len(answers)
    for span, answer in zip(spans, answers):
        assert span[-1] == tok.eos_token_id
        assert tok.decode(span[:-1]).strip() == answer.strip()


def test_golden_cover_both_legacy_settings_and_a_mismatch():
    assert {c["legacy"] for c in CASES} == {True, False}
    assert {c["template"] for c in CASES} == {"vicuna_v1", "plain", "vicuna_v1_generation"}
    assert any(c["llava_masked_all"] for c in CASES)  # the legacy=False multi-turn case the arithmetic masks
