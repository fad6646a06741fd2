"""Steps this package adds to the README demo (``mvit3 demo``), registered with
``mvit3_keras.demo.demo_step``."""
