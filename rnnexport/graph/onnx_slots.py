"""The positions of the inputs and outputs of ONNX's recurrent operators (``LSTM``, ``GRU``, ``RNN``).

ONNX gives these operators positional inputs, most of them optional (an empty name where one is left
out): ``X, W, R, B, sequence_lens, initial_h, initial_c, P`` and outputs ``Y, Y_h, Y_c``. ``GRU`` and
``RNN`` stop at ``initial_h`` and ``Y_h``; ``initial_c``, ``P`` and ``Y_c`` are ``LSTM``'s alone.
"""

from __future__ import annotations

__all__ = [
    "GATES",
    "INITIAL_C",
    "INITIAL_H",
    "INPUT_COUNT",
    "RECURRENT_OPS",
    "SEQUENCE_LENS",
    "STATE_INPUTS",
    "Y_C",
    "Y_H",
    "B",
    "P",
    "R",
    "W",
    "X",
    "Y",
]

#: The recurrent operators these positions belong to.
RECURRENT_OPS = ("LSTM", "GRU", "RNN")

#: Gate blocks per recurrent op, in ONNX's order (LSTM i, o, f, c; GRU z, r, h; RNN one).
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}

# Inputs.
X = 0  #: the sequence, ``[seq, batch, input]``
W = 1  #: the input weights, ``[dirs, gates * hidden, input]``
R = 2  #: the recurrent weights, ``[dirs, gates * hidden, hidden]``
B = 3  #: the biases, ``[dirs, 2 * gates * hidden]`` (input and recurrent), optional
SEQUENCE_LENS = 4  #: each sequence's length, ``[batch]``, optional
INITIAL_H = 5  #: the initial hidden state, ``[dirs, batch, hidden]``, optional
INITIAL_C = 6  #: the initial cell state (LSTM), optional
P = 7  #: the peephole weights (LSTM), optional
INPUT_COUNT = 8  #: how many input positions an LSTM has

#: The initial-state inputs, in order (LSTM has both, GRU and RNN the first).
STATE_INPUTS = (INITIAL_H, INITIAL_C)

# Outputs.
Y = 0  #: every step's hidden state, ``[seq, dirs, batch, hidden]``
Y_H = 1  #: the last hidden state, ``[dirs, batch, hidden]``
Y_C = 2  #: the last cell state (LSTM)
