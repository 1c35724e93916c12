"""`ember tune`: find the concurrency where a server stops gaining throughput, and recommend
num_parallel, the platform concurrency and the HPA target from it."""
