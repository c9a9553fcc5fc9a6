"""Rectified flow, written once for training and sampling. No nn.Module here:
the model is ``f(x_t, batch)``; this package noises, scores and samples."""
from .flow import FlowConfig, euler_sample, noise_batch, training_loss

__all__ = ["FlowConfig", "noise_batch", "training_loss", "euler_sample"]
