"""Synthetic scenes and the language about them: the images, their captions, other wordings of them, questions.

A scene is one to `max_objects` coloured squares, each in its own quadrant, on a grey, slightly noisy background:
most patches are background, so pruning 90% of the visual tokens can keep every object, if the pruner picks well.
The same scenes are described in words (never drawn) for the text-only LLM stand-in.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .synth_tasks import TASKS

COLOURS = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (230, 210, 40), "purple": (150, 60, 190), "orange": (240, 140, 30),
}
QUADRANTS = ["top left", "top right", "bottom left", "bottom right"]
BACKGROUND = 0.47  # the grey of every image, in [0, 1]; its noise: SceneConfig.bg_noise
NUMBERS = ["zero", "one", "two", "three", "four", "five"]
# neutral filler: sentences that name no colour, place or number, so that a question about a scene has one answer
# in its context however much text comes before the scene
SUBJECTS = ["the cat", "a dog", "my friend", "the teacher", "the river", "a bird", "the old man", "the child",
            "the wind", "a farmer", "the city", "the book"]
VERBS = ["sleeps", "runs", "sings", "waits", "is happy", "is quiet", "moves slowly", "looks tired", "stays", "works"]
PLACES = ["in the garden", "at home", "near the road", "by the sea", "in the morning", "after lunch", "every day",
          "in winter", "under the tree", "on the hill"]

Scene = list  # [(colour, quadrant), ...] in quadrant order


@dataclass
class SceneConfig:
    image_size: int = 32
    patch_size: int = 4
    min_objects: int = 1
    max_objects: int = 4
    object_cells: int = 2  # side of an object in patches; larger = less redundant background
    bg_noise: float = 0.03  # std of background noise in [0, 1] units; smaller = more redundant
    # tasks asked about one-object images, in words that bind nothing ("What colour is the object ?"); the others
    # about scenes of min..max objects, naming one object by its place or colour
    single_object_tasks: str = "colour,position"

    def single(self) -> set[str]:
        return {t for t in self.single_object_tasks.split(",") if t}

    def check(self) -> None:
        half = self.image_size // self.patch_size // 2
        if self.object_cells > half:
            raise ValueError(f"object_cells={self.object_cells} does not fit a quadrant of {half} patches "
                             f"({self.image_size} px images of {self.patch_size} px patches)")
        if not 1 <= self.min_objects <= self.max_objects <= len(QUADRANTS):
            raise ValueError(f"objects per scene must satisfy 1 <= min_objects <= max_objects <= {len(QUADRANTS)}, "
                             f"got {self.min_objects}..{self.max_objects}")
        unknown = self.single() - set(TASKS)
        if unknown:
            raise ValueError(f"single_object_tasks names unknown task(s) {sorted(unknown)}; tasks: {', '.join(TASKS)}")


def random_scene(rng: random.Random, cfg: SceneConfig, n: int | None = None) -> Scene:
    n = n or rng.randint(cfg.min_objects, cfg.max_objects)
    quads = sorted(rng.sample(range(len(QUADRANTS)), n))
    colours = rng.sample(sorted(COLOURS), n)
    return [(c, QUADRANTS[q]) for q, c in zip(quads, colours)]


def draw(rng: random.Random, nrng: np.random.Generator, cfg: SceneConfig, n: int | None = None):
    """One image and its scene, each object on object_cells x object_cells patches somewhere in its quadrant."""
    half = cfg.image_size // cfg.patch_size // 2
    pix = np.clip(BACKGROUND + cfg.bg_noise * nrng.standard_normal((cfg.image_size, cfg.image_size, 3)), 0, 1)
    scene = random_scene(rng, cfg, n)
    ps, oc = cfg.patch_size, cfg.object_cells
    for c, quad in scene:
        q = QUADRANTS.index(quad)
        r0 = (q // 2) * half + rng.randint(0, half - oc)
        c0 = (q % 2) * half + rng.randint(0, half - oc)
        pix[r0 * ps:(r0 + oc) * ps, c0 * ps:(c0 + oc) * ps] = np.array(COLOURS[c]) / 255.0
    return Image.fromarray((pix * 255).round().astype(np.uint8)), scene


def caption(scene: Scene) -> str:
    """The canonical caption: what stage 1 learns to say of an image."""
    parts = [f"a {c} object at the {q}" for c, q in scene]
    return f"{NUMBERS[len(scene)]} object{'s' if len(scene) != 1 else ''} : " + " , ".join(parts) + " ."


def describe(scene: Scene, rng: random.Random) -> str:
    """The scene in one of several wordings, objects in a random order: how a text speaks of a scene."""
    objs = list(scene)
    rng.shuffle(objs)
    form = rng.randrange(4)
    if form == 0:
        return caption(scene)
    if form == 1:
        return " ".join(f"there is a {c} object at the {q} ." for c, q in objs)
    if form == 2:
        return " ".join(f"the {q} has a {c} object ." for c, q in objs)
    return f"the picture shows {NUMBERS[len(scene)]} objects . " + " ".join(f"{c} at the {q} ." for c, q in objs)


def question(task: str, scene: Scene, rng: random.Random) -> tuple[str, str]:
    """(question, answer). A one-object scene is asked about in words that name no object."""
    if len(scene) == 1 and task in ("colour", "position"):
        c, q = scene[0]
        return ("What colour is the object ?", c) if task == "colour" else ("Where is the object ?", q)
    if task == "colour":
        c, q = rng.choice(scene)
        return f"What colour is the object at the {q} ?", c
    if task == "count":
        return "How many objects are there ?", NUMBERS[len(scene)]
    if task == "presence":  # POPE-like yes/no, balanced
        present = [c for c, _ in scene]
        absent = [c for c in sorted(COLOURS) if c not in present]
        if rng.random() < 0.5 or not absent:
            return f"Is there a {rng.choice(present)} object ?", "yes"
        return f"Is there a {rng.choice(absent)} object ?", "no"
    if task == "position":
        c, q = rng.choice(scene)
        return f"Where is the {c} object ?", q
    raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")


def text_only(rng: random.Random) -> tuple[str, str]:
    """Questions about the vocabulary itself, with no scene: text-only samples."""
    if rng.random() < 0.5:
        word = rng.choice(sorted(COLOURS) + QUADRANTS)
        return f"Is {word} a colour ?", "yes" if word in COLOURS else "no"
    a = rng.randint(0, 3)
    return f"What number comes after {NUMBERS[a]} ?", NUMBERS[a + 1]


def filler(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(PLACES)} ."


def words() -> list[str]:
    """Every word the scenes' language uses (for the repeated-text documents of the corpus)."""
    text = " ".join(SUBJECTS + VERBS + PLACES + QUADRANTS + NUMBERS + sorted(COLOURS))
    return sorted(set(text.split()) | {"a", "object", "objects", "at", "the", "there", "is"})
