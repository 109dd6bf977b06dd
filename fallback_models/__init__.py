"""Local models the router falls back to: a TF-IDF model (a regression and two small
networks over word n-grams), a BERT-family encoder, and their ensemble.

:mod:`.registry` lists the kinds (the router finds it through an entry point); heavy
imports (scikit-learn, torch, transformers) happen inside the submodules that need them,
so importing this package is cheap.
"""
