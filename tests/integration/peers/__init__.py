"""Real SIP peers for integration tests and benchmarks (telephony.md §7).

``sipp`` (load and conformance scenarios from tests/integration/sipp/), ``sipsak`` (OPTIONS, REGISTER),
``baresip`` (a scripted phone with audio from and to WAV files), ``audio`` (tones and their analysis),
``kamailio`` (the reference server) and ``service.SipService`` (what a test knows about the server under
test). Every peer binds 127.0.0.1 only, on free ports, and every run is bounded in time.
"""
