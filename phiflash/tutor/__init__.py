"""The tutor: its data generator, tokenizer, answer checking and the eval-math library.

Core layer: nothing here imports an engine; ``phiflash eval-math`` (in
``phiflash.commands``) opens one and hands it to :func:`evalmath.evaluate`.
"""
