"""lmms-eval model for DualSpeed checkpoints, with batch size above 1 and pruned inference.

model_args: pretrained=<run>/hf, mode=normal|pruned|pruned_noiso, method=<vtp>, ratio=<p>,
batch_size=N, device=cpu|cuda, dtype=float32|bfloat16, max_new_tokens=N, stats_out=<json path>,
clip_text=auto|none|<CLIP dir> (the relevance signal's text tower; see Predictor).

lmms-eval 0.7.3 defects worked around here:
- `lmms.clean()` deletes every nn.Module attribute of the model object after a task, so a second
  task would find no model. The network lives inside a plain container (`self._net`), which clean()
  does not touch.
- the evaluator passes every response through `unwrap_generation_output`, which turns anything that
  is not a string into `str(x)`: a loglikelihood answer `(nll, is_greedy)` became the text
  "(1.2, True)" and multiple-choice scoring then unpacked characters. Each answer is returned inside a
  `GenerationResult`, whose payload the evaluator hands through untouched. Multiple-choice picks the
  answer by argmin, so the payload is a positive NLL (see Predictor.score).
"""
from __future__ import annotations

import json
from pathlib import Path

from lmms_eval.api.instance import GenerationResult
from lmms_eval.api.model import lmms
from tqdm import tqdm

from ...modes import INFERENCE_MODES
from ..predictor import Predictor, Query, pdrop_settings


class _Holder:
    """Not an nn.Module, so lmms.clean() leaves it (and the network inside) alone."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor


class DualSpeedLMM(lmms):
    is_simple = True

    def __init__(self, pretrained: str, mode: str = "normal", method: str | None = None, ratio: float | None = None,
                 batch_size: int = 16, device: str = "cpu", dtype: str = "float32", max_new_tokens: int = 16,
                 stats_out: str = "", seed: int = 0, clip_text: str = "auto", pdrop_layers: str = "",
                 pdrop_lam: float | str = 0.5, **kwargs):
        super().__init__()
        if not (Path(pretrained) / "config.json").is_file():
            raise FileNotFoundError(f"dualspeed_llava: no checkpoint at '{pretrained}' (expected <run>/hf with config.json)")
        if mode not in INFERENCE_MODES:
            raise ValueError(f"dualspeed_llava: unknown mode '{mode}'; choose one of {', '.join(INFERENCE_MODES)}")
        if kwargs:
            raise ValueError(f"dualspeed_llava: unknown model_args {sorted(kwargs)}")
        self._net = _Holder(Predictor(pretrained, mode=mode, method=method or None,
                                      ratio=float(ratio) if ratio not in (None, "") else None,
                                      batch_size=int(batch_size), device=device, dtype=dtype,
                                      max_new_tokens=int(max_new_tokens), seed=int(seed),
                                      clip_text=clip_text, pdrop=pdrop_settings(pdrop_layers, pdrop_lam)))
        self.batch_size_per_gpu = int(batch_size)
        self._stats_out = stats_out

    @property
    def predictor(self) -> Predictor:
        return self._net.predictor

    def _query(self, context: str, visuals) -> Query:
        images = [v for v in visuals if v is not None]
        if len(images) > 1:
            raise ValueError("dualspeed_llava: one image per sample is supported (LLaVA-1.5 style)")
        return Query(context, images[0] if images else None)

    def generate_until(self, requests) -> list[str]:
        queries, max_new = [], self.predictor.max_new_tokens
        for context, gen_kwargs, doc_to_visual, doc_id, task, split in [r.args for r in requests]:
            visuals = doc_to_visual(self.task_dict[task][split][doc_id])
            queries.append(self._query(context, visuals if isinstance(visuals, list) else [visuals]))
            max_new = int(gen_kwargs.get("max_new_tokens", max_new))
        self.predictor.max_new_tokens = max_new
        with tqdm(total=len(queries), desc="dualspeed_llava generating") as bar:
            answers = self.predictor.predict(queries, progress=bar)
        self._write_stats()
        return answers

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        p = self.predictor
        out = []
        for context, doc_to_target, doc_to_visual, doc_id, task, split in tqdm([r.args for r in requests],
                                                                                 desc="dualspeed_llava scoring"):
            doc = self.task_dict[task][split][doc_id]
            target = doc_to_target if isinstance(doc_to_target, str) else doc_to_target(doc)
            visuals = doc_to_visual(doc)
            q = self._query(context, visuals if isinstance(visuals, list) else [visuals])
            out.append(GenerationResult(text=p.score(q, target)))
        self._write_stats()
        return out

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("dualspeed_llava: multi-round generation is not supported")

    def _write_stats(self):
        if self._stats_out:
            Path(self._stats_out).parent.mkdir(parents=True, exist_ok=True)
            Path(self._stats_out).write_text(json.dumps(self.predictor.summary(), indent=2))
