"""Use an export as a newcomer would, with transformers only (no dualspeed import): AutoProcessor, the
chat template on llava-hf messages, generate, and the log-likelihood of a continuation.

    python tests/plain_hf_roundtrip.py JOB.json   (JOB: {"ckpt", "queries": [{"image", "question", "answer"}]})
Prints one JSON object: {"prompts", "input_ids", "answers", "nll"}.
"""
import json
import sys

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor


def main(job_path):
    job = json.loads(open(job_path).read())
    processor = AutoProcessor.from_pretrained(job["ckpt"])
    model = AutoModelForImageTextToText.from_pretrained(job["ckpt"]).eval()
    out = {"prompts": [], "input_ids": [], "answers": [], "nll": []}
    for q in job["queries"]:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q["question"]}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=Image.open(q["image"]), text=prompt, return_tensors="pt")
        with torch.no_grad():
            gen = model.generate(**inputs, max_new_tokens=16, do_sample=False)
            answer = processor.tokenizer.decode(gen[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            cont = processor.tokenizer(q["answer"], add_special_tokens=False, return_tensors="pt").input_ids
            full = {**inputs, "input_ids": torch.cat([inputs["input_ids"], cont], 1),
                    "attention_mask": torch.ones(1, inputs["input_ids"].shape[1] + cont.shape[1], dtype=torch.long)}
            logits = model(**full).logits[0, inputs["input_ids"].shape[1] - 1:-1].float()
        nll = -torch.log_softmax(logits, -1).gather(1, cont[0][:, None]).sum()
        out["prompts"].append(prompt)
        out["input_ids"].append(inputs["input_ids"][0].tolist())
        out["answers"].append(answer.strip())
        out["nll"].append(float(nll))
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
