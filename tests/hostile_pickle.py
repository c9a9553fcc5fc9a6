"""What an attacker ships in a pickle: unpickling calls open(marker, "w"), so a marker file
appears exactly when a loader ran the file's code. Shared by the loader-refusal tests."""


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))
