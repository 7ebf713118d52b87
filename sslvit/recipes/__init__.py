"""Run recipes: for each objective, the run's config (its keys and reference defaults), the data
transform and collate it trains with, and how its objective is built. ``pretrain/*.py`` hand
one to ``sslvit.train.entry.main``. Objectives (``sslvit.objectives``) know nothing of runs."""
