"""The PEFT-compatible core: PrefixTuningConfig (config.py), PrefixEncoder (encoder.py),
PrefixTuningModel (model.py), the adapter's Hub/folder resolution (hub.py), its model card
(card.py) and the transformers Trainer that checkpoints a prefix (hf_trainer.py).

May import: torch, transformers, safetensors, huggingface_hub, and itself. Never the engine, the
views, the page, the CLI or the tools: it knows nothing of runs, forms or screens.
"""
