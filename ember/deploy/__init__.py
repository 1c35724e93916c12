"""Deploy ember: container build contexts, Cloud Run and Kubernetes manifests, and the checks
that keep their numbers consistent with each other."""
