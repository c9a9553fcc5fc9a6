"""vincie_mcore: VINCIE (in-context image editing learned from video) on Megatron-Core.

Layout convention, used everywhere below:

* A training or inference step works on ONE packed sequence made of several
  sessions. It is held as two *streams*: the text stream ``[S_txt, ...]`` (the
  text turns of every session, each turn preceded by a ``<TURN>_i`` token) and
  the image stream ``[S_img, ...]`` (every image and mask of every session,
  patchified). Inside the model streams are sequence-first ``[S, 1, D]``
  (Megatron's ``[s, b, h]`` with b = 1: packing replaces the batch dimension).
* The *joint* sequence, over which attention runs, is ``cat(text, image)``:
  joint token ``j < S_txt`` is text token ``j``; ``j >= S_txt`` is image token
  ``j - S_txt``. The compact mask spec (``data/maskspec.py``) is expressed in
  joint coordinates.
* Data flows one way: data -> packing -> diffusion (noise) -> model -> loss.
"""
__version__ = "0.1.0"
