"""The text corpus of the LLM stand-in: what a chat LLM like Vicuna knows from text, in the scenes' language.

Vicuna was pretrained on long texts of every kind and chat-tuned on conversations; it never saw a visual token.
The stand-in reads documents of three kinds, never an image:
- prose ({"text": ...}, every token predicted): a scene in one of several wordings after neutral filler, then
  its canonical caption; or a run of words repeated (what teaches a language model to look back and copy, the
  skill a frozen LLM needs to caption through a projector in stage 1);
- chat ({"conversations": [...]}, the answers predicted): filler, a scene in words, then a question about it, a
  request to describe it, or a question about the vocabulary.
Documents reach the length of the prompt with a full visual sequence, so a long context is nothing new later.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .scenes import COLOURS, NUMBERS, QUADRANTS, SceneConfig, caption, describe, filler, question, random_scene, text_only, words
from .synth_tasks import TASKS


@dataclass
class CorpusConfig:
    max_filler: int = 6  # neutral sentences before a scene, 0..max_filler
    repeat: float = 0.35  # share of repeated-text documents
    prose: float = 0.15  # share of scene-then-caption prose
    describe: float = 0.1  # share of chats asking to describe the scene
    max_turns: int = 3  # questions about the scene in one chat, 1..max_turns: each answer is a training target


def repeat_document(rng: random.Random, pick) -> dict:
    """A run of 8 to 30 words drawn by pick(), twice: the second half is learned only by looking back."""
    run = " ".join(pick() for _ in range(rng.randint(8, 30)))
    return {"kind": "repeat", "text": f"{run} {run}"}


def document(rng: random.Random, scenes: SceneConfig, cfg: CorpusConfig) -> dict:
    r = rng.random()
    if r < cfg.repeat:
        # half the words from the scenes' own vocabulary (colours, places, numbers): the words a caption and an
        # answer copy, which a corpus of scenes alone makes interchangeable (each is equally likely anywhere)
        vocab, scene_words = words(), sorted(COLOURS) + [w for q in QUADRANTS for w in q.split()] + NUMBERS[1:5]
        return repeat_document(rng, lambda: rng.choice(scene_words if rng.random() < 0.5 else vocab))
    task = rng.choice(TASKS)
    # what the image questions ask of one-object scenes, the corpus asks of one-object scenes in words too
    one = task in scenes.single() and rng.random() < 0.5
    scene = random_scene(rng, scenes, 1 if one else None)
    context = " ".join([filler(rng) for _ in range(rng.randint(0, cfg.max_filler))] + [describe(scene, rng)])
    if r < cfg.repeat + cfg.prose:
        return {"kind": "prose", "text": f"{context} {caption(scene)}"}
    turns = []
    for t in range(rng.randint(1, cfg.max_turns)):
        r = rng.random()
        if r < cfg.describe:
            q, a = "Describe the scene .", caption(scene)
        elif r < cfg.describe + 0.1:
            q, a = text_only(rng)
        else:
            q, a = question(task if t == 0 else rng.choice(TASKS), scene, rng)
        turns += [{"from": "human", "value": f"{context} {q}" if t == 0 else q}, {"from": "gpt", "value": a}]
    return {"kind": "chat", "conversations": turns}


def corpus(n: int, seed: int, scenes: SceneConfig, cfg: CorpusConfig) -> list[dict]:
    rng = random.Random(seed)
    return [document(rng, scenes, cfg) for _ in range(n)]
