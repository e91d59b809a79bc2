"""``ami-factory``: start an imaging run, follow it live, print the result. Works against a deployed
stack on AWS or against the local emulator (``--endpoint-url``)."""
