"""Entry points: the ``station`` command line, the headless receiver host, the GUI's start-up
and the self-test. The only layer that wires core, net and ui together."""
