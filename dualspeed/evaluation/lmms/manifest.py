"""Entry point payload: lmms-eval finds `dualspeed_llava` through the `lmms_eval.models` group."""
from lmms_eval.models.registry_v2 import ModelManifest

MANIFEST = ModelManifest(model_id="dualspeed_llava", simple_class_path="dualspeed.evaluation.lmms.model.DualSpeedLMM",
                         aliases=("dualspeed",))
