"""Examples built on mvit3-keras, installed as the package ``mvit3_examples``.

They are not part of the library (``mvit3_keras``, ``training``,
``quantization``): they only use its public API. ``setup.cfg`` ships this folder
under the name ``mvit3_examples`` so that a plain ``pip install mvit3-keras``
runs ``mvit3 demo`` (:mod:`mvit3_examples.commands`), the README's main job
(``bash scripts/demo.sh``).

* :mod:`mvit3_examples.demo`: the end-to-end demo, one module per step.
"""
