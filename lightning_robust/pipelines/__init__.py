"""End-to-end data pipelines built on the data, model and module layers.

- :mod:`~lightning_robust.pipelines.build_pairs`: on-policy preference pairs (S002's pipeline):
  sample ``K`` completions per prompt from a policy, score them with reward models, keep max/min
  (or all) pairs.
- :mod:`~lightning_robust.pipelines.gold_proxy`: S003's gold/proxy setup: label pairs with a gold
  reward model, train the proxy reward model, calibrate ``delta~_0`` on a pilot set.
"""
