"""Local models the router falls back to: TF-IDF + linear SVM, and a fine-tuned BERT.

Heavy imports (scikit-learn, torch, transformers) happen inside the submodules that need
them, so importing this package is cheap.
"""
