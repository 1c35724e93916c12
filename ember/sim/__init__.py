"""`ember simulate`: a discrete-event simulation of a fleet of ember instances under an
autoscaler (Cloud Run concurrency-based, or an HPA on queue length), fed with a per-instance
profile and a request trace."""
