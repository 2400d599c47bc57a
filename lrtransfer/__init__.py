"""lrtransfer: does a learning rate tuned on a small network stay optimal on a wider or deeper one?"""
__version__ = "0.1.0"
