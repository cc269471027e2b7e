"""Reproduction II (issue 29): training length, fine-tuning from one pre-trained SMoE, and the
merge's own knobs, on the tiny preset and the built-in corpus.

Run everything (resumable; finished runs are skipped, interrupted ones resumed)::

    python -m studies.study2 run            # or: make study2
    python -m studies.study2 report         # results/reproduction2.md and its plots

Modules: :mod:`.jobs` (a job, the scheduler, the lock), :mod:`.length` (part 1),
:mod:`.finetune` (part 2: task, upcycling, fine-tuning loop), :mod:`.knobs` (part 3),
:mod:`.plan` (the ordered job list of a profile), :mod:`.stats` and :mod:`.report`
(tables from the run folders' files only). Uses only the public API of
:mod:`namex_ref.train` (``TrainConfig``, ``train``, ``read_result``, ``load_checkpoint``,
``lr_at``, ``mean_ci``), of :mod:`namex_ref.models.gpt` and :func:`namex_ref.hf.initial_base`.
"""
