"""Training with TRL's trainers on the trajectories `sca rollout` wrote, or online on tasks.

Algorithms (:data:`~sca.training.algorithms.ALGORITHMS`; each picks what it trains on, then hands
it to a TRL trainer):

* ``rft``, the paper's self-improvement (rejection fine-tuning, i.e. REINFORCE with a 0/1
  reward): supervised fine-tuning (TRL's ``SFTTrainer``) on the trajectories with reward 1.
* ``sft``, distillation: the same on every trajectory whose reward is 0 or 1 (null rewards,
  infrastructure failures, are left out).
* ``dpo``: TRL's ``DPOTrainer`` on pairs of trajectories of the same task, reward 1 (chosen)
  against reward 0 (rejected), multi-turn.
* ``grpo``, online: TRL's ``GRPOTrainer`` on CaT tasks, each group K live episodes of our engine
  played by the model in training, rewarded by the task's ``evaluate``.

Nothing here re-implements a trainer or a loss: this package decides what each token is (the
loss covers the assistant's own tokens only, in every turn, checked on every example before any
training) and hands TRL the examples. One module per idea:

* :mod:`~sca.training.algorithms`: the one list of algorithms (light: the command line reads it);
* :mod:`~sca.training.selection`: what each algorithm trains on (trajectories by reward, DPO pairs,
  GRPO's tasks);
* :mod:`~sca.training.options`: our options and their defaults (light: ``sca train --help`` shows them);
* :mod:`~sca.training.configs`: the typed configs (TRL's, with our options), presets, building one;
* :mod:`~sca.training.encoding`: the chat encoding, the assistant-only mask and its check, token
  parity, end-of-turn tokens, the cut at max_length;
* :mod:`~sca.training.job`, :mod:`~sca.training.sft`, :mod:`~sca.training.dpo`,
  :mod:`~sca.training.grpo`: each algorithm's examples and trainer;
* :mod:`~sca.training.log`: train_log.jsonl; :mod:`~sca.training.fit`: the run, the same skeleton
  for every algorithm (resume, output check, tokenizer, log, train, save or merge, summary).

Modules that subclass TRL's classes import TRL (seconds): the command line imports only the light
ones. ``stages.train`` reads the input, calls :func:`~sca.training.fit.fit` and writes the summary.
"""
