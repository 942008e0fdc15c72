description = "has no run function"
