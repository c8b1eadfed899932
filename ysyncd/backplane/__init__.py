"""How nodes that share a store tell each other what they committed.

:mod:`ysyncd.backplane.messages` is the wire format and the gap tracker (pure);
:mod:`ysyncd.backplane.redis` carries them over Redis pub/sub. The rooms' side
is :mod:`ysyncd.cluster`.
"""
