"""Training stages (teacher, student, offline and online distillation) with Accelerate."""
