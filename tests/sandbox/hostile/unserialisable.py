def run():
    return {"when": object()}
