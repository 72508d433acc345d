"""The built-in methods: peft's tuners (what they share: :mod:`.peft_base`), ladder side-tuning
(:mod:`.lst`) and full fine-tuning."""
