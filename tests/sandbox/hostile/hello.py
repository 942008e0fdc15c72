description = "says hello"
version = "1.0"


def run(name="world"):
    print(f"hello {name}")
    return {"greeting": f"hello {name}"}
