"""Staged canary rollouts: policy checks, status transitions, the guards and the controller.

Pure parts (`validate`, `status`, `guards`, `decide`, `control`) hold the rules; `window`
reads a step's outcomes, `gate` the offline evaluations, `controller` runs the loop.
"""
