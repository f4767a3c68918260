"""The serving app (SageMaker container contract) and the local endpoint router."""
