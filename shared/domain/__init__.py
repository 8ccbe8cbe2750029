"""The rules of seat billing in plain Python: seats, money, periods. Standard library only."""
