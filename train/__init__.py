"""Fine-tuning and evaluation of ImageNet backbones on chest X-rays (needs the ``train`` extra)."""
