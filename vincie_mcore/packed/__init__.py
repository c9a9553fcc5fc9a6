"""The packed sequence: the contract every layer of vincie_mcore shares.

A training or inference step works on ONE packed sequence made of several sessions.
This package defines what that sequence is and nothing that produces or consumes it:

* ``maskspec.py``: ``MaskSpec``, the compact attention mask (four int32 vectors over
  blocks + a mask type) and the token kinds (``KIND_TEXT/CLEAN/NOISY``, the kernels' ABI);
* ``batch.py``: ``PackedBatch``, the streams, positions, spec and per-block times of a step;
* ``patches.py``: ``patchify``/``unpatchify``, latents <-> image-stream tokens;
* ``shard.py``: which joint tokens a context-parallel rank owns (pure index arithmetic);
* ``builder.py``: ``BatchBuilder``, the one place a ``PackedBatch`` is laid out.

Layout convention, used everywhere:

* The packed sequence is held as two *streams*: the text stream ``[S_txt, ...]`` (the
  text turns of every session, each turn preceded by a ``<TURN>_i`` token) and the image
  stream ``[S_img, ...]`` (every image and mask of every session, patchified). Inside the
  model streams are sequence-first ``[S, 1, D]`` (Megatron's ``[s, b, h]`` with b = 1:
  packing replaces the batch dimension).
* The *joint* sequence, over which attention runs, is ``cat(text, image)``: joint token
  ``j < S_txt`` is text token ``j``; ``j >= S_txt`` is image token ``j - S_txt``. The
  compact mask spec is expressed in joint coordinates: every text block comes before every
  image block.
* Sessions never attend to each other; padding is a block of its own session.

Why at the bottom: data flows one way (video -> data -> packed batch -> model -> loss),
and every stage names these types. Kept here, below data/, model/, diffusion/ and
parallel/, they let each stage depend on the contract rather than on the stage that
produces it (the model never imports the data pipeline, the packer never imports the
model). This package imports only torch and ``vincie_kernels.reference`` (the mask rule,
written once); ``tests/test_layers.py`` enforces the direction.
"""
