"""The model as stored: checkpoints, a restored model for inference, clean precision."""
