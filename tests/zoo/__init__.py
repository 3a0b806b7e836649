"""A zoo of user-style recurrent models, built with ``--model`` and proven against eager PyTorch."""
