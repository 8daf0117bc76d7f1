"""Write the router's task set (steer/data/router/tasks.jsonl and paraphrases.jsonl).

Every query, reference answer and unit test below was written for this project. Queries are
composed from hand-written parts, so the file is rebuilt by this script, deterministically. Each task
records its template (the wording it comes from): splits keep templates apart, and paraphrases reword a
task with another template. Gendered subjects occur in every domain, and hostile, firm and polite tones are
written many ways in every domain, so that no property is a stand-in for a domain.
Run: python scripts/build_router_tasks.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "steer" / "data" / "router"

# -- code: (function, description, reference, tests) -------------------------------------------
CODE = [
    ("is_even", "returns True when the integer n is even", "def is_even(n):\n    return n % 2 == 0",
     "assert is_even(4)\nassert not is_even(7)\nassert is_even(0)"),
    ("square_all", "returns a list with the square of every number in xs", "def square_all(xs):\n    return [x * x for x in xs]",
     "assert square_all([1, 2, 3]) == [1, 4, 9]\nassert square_all([]) == []"),
    ("reverse_string", "returns the string s reversed", "def reverse_string(s):\n    return s[::-1]",
     "assert reverse_string('abc') == 'cba'\nassert reverse_string('') == ''"),
    ("count_vowels", "counts the vowels (a, e, i, o, u, either case) in the string s",
     "def count_vowels(s):\n    return sum(ch in 'aeiouAEIOU' for ch in s)",
     "assert count_vowels('Hello World') == 3\nassert count_vowels('xyz') == 0"),
    ("factorial", "returns n factorial for a non-negative integer n",
     "def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result",
     "assert factorial(0) == 1\nassert factorial(5) == 120"),
    ("fibonacci", "returns the n-th Fibonacci number, with fibonacci(0) == 0 and fibonacci(1) == 1",
     "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
     "assert fibonacci(0) == 0\nassert fibonacci(1) == 1\nassert fibonacci(10) == 55"),
    ("is_palindrome", "returns True when the string s reads the same forwards and backwards",
     "def is_palindrome(s):\n    return s == s[::-1]", "assert is_palindrome('level')\nassert not is_palindrome('hello')"),
    ("max_of_list", "returns the largest number in the non-empty list xs without using max()",
     "def max_of_list(xs):\n    best = xs[0]\n    for x in xs[1:]:\n        if x > best:\n            best = x\n    return best",
     "assert max_of_list([3, 9, 2]) == 9\nassert max_of_list([-5]) == -5"),
    ("sum_digits", "returns the sum of the decimal digits of the non-negative integer n",
     "def sum_digits(n):\n    return sum(int(d) for d in str(n))", "assert sum_digits(1234) == 10\nassert sum_digits(0) == 0"),
    ("is_prime", "returns True when the integer n is a prime number",
     "def is_prime(n):\n    if n < 2:\n        return False\n    i = 2\n    while i * i <= n:\n        if n % i == 0:\n            return False\n        i += 1\n    return True",
     "assert is_prime(13)\nassert not is_prime(15)\nassert not is_prime(1)"),
    ("celsius_to_fahrenheit", "converts a temperature in degrees Celsius to Fahrenheit",
     "def celsius_to_fahrenheit(c):\n    return c * 9 / 5 + 32",
     "assert celsius_to_fahrenheit(0) == 32\nassert celsius_to_fahrenheit(100) == 212"),
    ("word_count", "returns the number of words in the string s, words being separated by whitespace",
     "def word_count(s):\n    return len(s.split())", "assert word_count('the quick brown fox') == 4\nassert word_count('') == 0"),
    ("unique_sorted", "returns the distinct elements of xs in ascending order",
     "def unique_sorted(xs):\n    return sorted(set(xs))", "assert unique_sorted([3, 1, 3, 2]) == [1, 2, 3]"),
    ("gcd", "returns the greatest common divisor of two positive integers a and b",
     "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a", "assert gcd(12, 18) == 6\nassert gcd(7, 5) == 1"),
    ("flatten", "flattens a list of lists into one list, keeping the order",
     "def flatten(lists):\n    return [x for inner in lists for x in inner]",
     "assert flatten([[1, 2], [3], []]) == [1, 2, 3]"),
    ("capitalize_words", "returns the string s with the first letter of every word in upper case",
     "def capitalize_words(s):\n    return ' '.join(w[:1].upper() + w[1:] for w in s.split(' '))",
     "assert capitalize_words('hello big world') == 'Hello Big World'"),
    ("average", "returns the arithmetic mean of the non-empty list of numbers xs",
     "def average(xs):\n    return sum(xs) / len(xs)", "assert average([1, 2, 3, 4]) == 2.5"),
    ("count_occurrences", "returns a dict mapping each character of the string s to how often it occurs",
     "def count_occurrences(s):\n    counts = {}\n    for ch in s:\n        counts[ch] = counts.get(ch, 0) + 1\n    return counts",
     "assert count_occurrences('abca') == {'a': 2, 'b': 1, 'c': 1}"),
    ("second_largest", "returns the second largest distinct value in the list xs",
     "def second_largest(xs):\n    return sorted(set(xs))[-2]", "assert second_largest([4, 1, 4, 3]) == 3"),
    ("is_anagram", "returns True when the strings a and b are anagrams of each other",
     "def is_anagram(a, b):\n    return sorted(a) == sorted(b)", "assert is_anagram('listen', 'silent')\nassert not is_anagram('abc', 'abd')"),
    ("chunk", "splits the list xs into consecutive chunks of size n (the last may be shorter)",
     "def chunk(xs, n):\n    return [xs[i:i + n] for i in range(0, len(xs), n)]",
     "assert chunk([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]"),
    ("merge_dicts", "returns a new dict with the items of a and b, values from b winning on equal keys",
     "def merge_dicts(a, b):\n    return {**a, **b}", "assert merge_dicts({'x': 1, 'y': 2}, {'y': 3}) == {'x': 1, 'y': 3}"),
    ("binary_search", "returns the index of target in the sorted list xs, or -1 when it is absent",
     "def binary_search(xs, target):\n    lo, hi = 0, len(xs) - 1\n    while lo <= hi:\n        mid = (lo + hi) // 2\n        if xs[mid] == target:\n            return mid\n        if xs[mid] < target:\n            lo = mid + 1\n        else:\n            hi = mid - 1\n    return -1",
     "assert binary_search([1, 3, 5, 7], 5) == 2\nassert binary_search([1, 3, 5], 4) == -1"),
    ("remove_duplicates", "removes duplicates from the list xs, keeping the first occurrence of each value in order",
     "def remove_duplicates(xs):\n    seen = set()\n    out = []\n    for x in xs:\n        if x not in seen:\n            seen.add(x)\n            out.append(x)\n    return out",
     "assert remove_duplicates([3, 1, 3, 2, 1]) == [3, 1, 2]"),
    ("power_set_size", "returns how many subsets a set of n elements has",
     "def power_set_size(n):\n    return 2 ** n", "assert power_set_size(3) == 8\nassert power_set_size(0) == 1"),
    ("fizzbuzz", "returns 'Fizz' for multiples of 3, 'Buzz' for multiples of 5, 'FizzBuzz' for both, else str(n)",
     "def fizzbuzz(n):\n    if n % 15 == 0:\n        return 'FizzBuzz'\n    if n % 3 == 0:\n        return 'Fizz'\n    if n % 5 == 0:\n        return 'Buzz'\n    return str(n)",
     "assert fizzbuzz(9) == 'Fizz'\nassert fizzbuzz(10) == 'Buzz'\nassert fizzbuzz(30) == 'FizzBuzz'\nassert fizzbuzz(7) == '7'"),
    ("rotate_left", "rotates the list xs left by k positions",
     "def rotate_left(xs, k):\n    if not xs:\n        return []\n    k %= len(xs)\n    return xs[k:] + xs[:k]",
     "assert rotate_left([1, 2, 3, 4], 1) == [2, 3, 4, 1]\nassert rotate_left([], 3) == []"),
    ("transpose", "returns the transpose of a matrix given as a list of equal-length rows",
     "def transpose(m):\n    return [list(row) for row in zip(*m)]", "assert transpose([[1, 2], [3, 4]]) == [[1, 3], [2, 4]]"),
    ("dot_product", "returns the dot product of two equal-length lists of numbers",
     "def dot_product(a, b):\n    return sum(x * y for x, y in zip(a, b))", "assert dot_product([1, 2, 3], [4, 5, 6]) == 32"),
    ("camel_to_snake", "converts a camelCase identifier to snake_case",
     "def camel_to_snake(name):\n    out = ''\n    for ch in name:\n        out += '_' + ch.lower() if ch.isupper() else ch\n    return out",
     "assert camel_to_snake('helloWorldAgain') == 'hello_world_again'"),
    ("count_words_frequency", "returns a dict of how often each lower-cased word occurs in the string s",
     "def count_words_frequency(s):\n    counts = {}\n    for w in s.lower().split():\n        counts[w] = counts.get(w, 0) + 1\n    return counts",
     "assert count_words_frequency('a B a') == {'a': 2, 'b': 1}"),
    ("running_sum", "returns the running (cumulative) sums of the list xs",
     "def running_sum(xs):\n    total, out = 0, []\n    for x in xs:\n        total += x\n        out.append(total)\n    return out",
     "assert running_sum([1, 2, 3]) == [1, 3, 6]"),
    ("is_leap_year", "returns True when the year is a leap year in the Gregorian calendar",
     "def is_leap_year(year):\n    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)",
     "assert is_leap_year(2024)\nassert not is_leap_year(1900)\nassert is_leap_year(2000)"),
    ("title_case_count", "counts how many words of the string s start with an upper-case letter",
     "def title_case_count(s):\n    return sum(1 for w in s.split() if w[:1].isupper())",
     "assert title_case_count('Alice met Bob in paris') == 2"),
    ("list_product", "returns the product of all numbers in the list xs (1 for an empty list)",
     "def list_product(xs):\n    result = 1\n    for x in xs:\n        result *= x\n    return result",
     "assert list_product([2, 3, 4]) == 24\nassert list_product([]) == 1"),
    ("clamp", "limits the number x to the range [lo, hi]",
     "def clamp(x, lo, hi):\n    return max(lo, min(x, hi))", "assert clamp(5, 0, 3) == 3\nassert clamp(-1, 0, 3) == 0\nassert clamp(2, 0, 3) == 2"),
    ("digits_reversed", "returns the integer whose decimal digits are those of the non-negative integer n reversed",
     "def digits_reversed(n):\n    return int(str(n)[::-1])", "assert digits_reversed(1234) == 4321\nassert digits_reversed(120) == 21"),
    ("longest_word", "returns the longest word of the string s (the first one on ties)",
     "def longest_word(s):\n    best = ''\n    for w in s.split():\n        if len(w) > len(best):\n            best = w\n    return best",
     "assert longest_word('a bb ccc dd') == 'ccc'"),
    ("filter_positive", "returns only the positive numbers of the list xs",
     "def filter_positive(xs):\n    return [x for x in xs if x > 0]", "assert filter_positive([-1, 2, 0, 5]) == [2, 5]"),
    ("pairwise_sums", "returns the sums of neighbouring elements of the list xs",
     "def pairwise_sums(xs):\n    return [a + b for a, b in zip(xs, xs[1:])]", "assert pairwise_sums([1, 2, 4]) == [3, 6]"),
    ("to_binary", "returns the binary representation of the non-negative integer n as a string without prefix",
     "def to_binary(n):\n    return bin(n)[2:]", "assert to_binary(5) == '101'\nassert to_binary(0) == '0'"),
    ("vowel_positions", "returns the indices of the vowels in the lower-case string s",
     "def vowel_positions(s):\n    return [i for i, ch in enumerate(s) if ch in 'aeiou']", "assert vowel_positions('banana') == [1, 3, 5]"),
    ("matrix_sum", "returns the sum of all numbers in a matrix given as a list of rows",
     "def matrix_sum(m):\n    return sum(sum(row) for row in m)", "assert matrix_sum([[1, 2], [3, 4]]) == 10"),
    ("is_sorted", "returns True when the list xs is sorted in non-decreasing order",
     "def is_sorted(xs):\n    return all(a <= b for a, b in zip(xs, xs[1:]))", "assert is_sorted([1, 2, 2, 5])\nassert not is_sorted([3, 1])"),
    ("char_histogram_max", "returns the character that occurs most often in the non-empty string s (the first on ties)",
     "def char_histogram_max(s):\n    return max(s, key=s.count)", "assert char_histogram_max('abbccc') == 'c'"),
    ("interleave", "interleaves two equal-length lists a and b as a[0], b[0], a[1], b[1], ...",
     "def interleave(a, b):\n    out = []\n    for x, y in zip(a, b):\n        out += [x, y]\n    return out",
     "assert interleave([1, 3], [2, 4]) == [1, 2, 3, 4]"),
    ("count_upper", "counts the upper-case letters in the string s",
     "def count_upper(s):\n    return sum(ch.isupper() for ch in s)", "assert count_upper('Hello World') == 2"),
    ("nth_triangular", "returns the n-th triangular number 1 + 2 + ... + n",
     "def nth_triangular(n):\n    return n * (n + 1) // 2", "assert nth_triangular(4) == 10\nassert nth_triangular(0) == 0"),
    ("strip_punctuation", "removes the characters .,!? from the string s",
     "def strip_punctuation(s):\n    return ''.join(ch for ch in s if ch not in '.,!?')", "assert strip_punctuation('Hi, you!') == 'Hi you'"),
    ("min_max", "returns a tuple (smallest, largest) of the non-empty list xs",
     "def min_max(xs):\n    return (min(xs), max(xs))", "assert min_max([4, -2, 9]) == (-2, 9)"),
    ("is_power_of_two", "returns True when the positive integer n is a power of two",
     "def is_power_of_two(n):\n    return n > 0 and n & (n - 1) == 0", "assert is_power_of_two(16)\nassert not is_power_of_two(12)"),
    ("safe_divide", "divides a by b and returns None when b is zero",
     "def safe_divide(a, b):\n    if b == 0:\n        return None\n    return a / b", "assert safe_divide(6, 3) == 2\nassert safe_divide(1, 0) is None"),
    ("acronym", "returns the upper-case acronym of the phrase s (first letter of every word)",
     "def acronym(s):\n    return ''.join(w[0].upper() for w in s.split())", "assert acronym('portable network graphics') == 'PNG'"),
    ("hamming_distance", "returns the number of positions at which two equal-length strings differ",
     "def hamming_distance(a, b):\n    return sum(x != y for x, y in zip(a, b))", "assert hamming_distance('karolin', 'kathrin') == 3"),
    ("sum_of_evens", "returns the sum of the even numbers in the list xs",
     "def sum_of_evens(xs):\n    return sum(x for x in xs if x % 2 == 0)", "assert sum_of_evens([1, 2, 3, 4]) == 6"),
    ("repeat_each", "returns a list in which every element of xs appears twice in a row",
     "def repeat_each(xs):\n    return [x for x in xs for _ in range(2)]", "assert repeat_each([1, 2]) == [1, 1, 2, 2]"),
]
CODE_ASKS = ["Write a Python function `{name}` that {desc}.", "Implement `{name}` in Python: it {desc}.",
             "In Python, define a function named `{name}` which {desc}.",
             "I need Python code: a function called `{name}`, which {desc}."]

# -- general knowledge ---------------------------------------------------------------------------
CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
            ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
            ("Brazil", "Brasília"), ("Argentina", "Buenos Aires"), ("Peru", "Lima"), ("Norway", "Oslo"),
            ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Poland", "Warsaw"), ("Greece", "Athens"),
            ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Hungary", "Budapest"),
            ("India", "New Delhi"), ("China", "Beijing"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
            ("Mexico", "Mexico City"), ("Chile", "Santiago"), ("Turkey", "Ankara"), ("Russia", "Moscow"),
            ("Morocco", "Rabat")]
FACTS = [
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What gas do plants absorb from the air for photosynthesis?", "Plants absorb carbon dioxide for photosynthesis."),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system."),
    ("At what temperature does water boil at sea level in Celsius?", "At sea level, water boils at 100 degrees Celsius."),
    ("Who wrote the play Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("How many continents are there on Earth?", "There are seven continents on Earth."),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa."),
    ("Which organ pumps blood through the human body?", "The heart pumps blood through the human body."),
    ("What is the hardest natural substance?", "Diamond is the hardest natural substance."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("How many days are there in a leap year?", "A leap year has 366 days."),
    ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 degrees Fahrenheit."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ("What is the smallest prime number?", "The smallest prime number is 2."),
    ("Which ocean is the largest?", "The Pacific Ocean is the largest ocean."),
    ("What is the main language spoken in Brazil?", "The main language spoken in Brazil is Portuguese."),
    ("How many minutes are in an hour?", "There are sixty minutes in an hour."),
    ("What do bees make from nectar?", "Bees make honey from nectar."),
    ("What is the closest star to Earth?", "The Sun is the closest star to Earth."),
    ("Which animal is the largest mammal?", "The blue whale is the largest mammal."),
    ("In which year did the first person walk on the Moon?", "The first person walked on the Moon in 1969."),
    ("What force keeps the planets in orbit around the Sun?", "Gravity keeps the planets in orbit around the Sun."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What is the capital letter form of the Greek letter used for sums?", "The Greek capital letter used for sums is Sigma."),
]
KNOWLEDGE_ASKS = ["What is the capital of {country}?", "Which city is the capital of {country}?",
                  "Name the capital city of {country}.", "{country}'s seat of government is in which city?"]

# -- letters and other writing -------------------------------------------------------------------
PEOPLE = [("Kelly", "she", "her"), ("Joseph", "he", "his"), ("Maria", "she", "her"), ("David", "he", "his"),
          ("Aisha", "she", "her"), ("Tom", "he", "his"), ("Emily", "she", "her"), ("Carlos", "he", "his"),
          ("Priya", "she", "her"), ("Kenji", "he", "his"), ("Sofia", "she", "her"), ("Liam", "he", "his")]
JOBS = ["nurse", "software engineer", "teacher", "accountant", "chef", "research assistant", "librarian",
        "sales manager", "graphic designer", "electrician", "pharmacist", "marketing analyst"]
WRITING = [
    ("Write a short recommendation letter for {name}, a {job}.",
     "To whom it may concern,\n\nI am pleased to recommend {name}, who worked with us as a {job}. {Pronoun} was "
     "reliable, skilled and kind to colleagues, and {pos} work was always careful. I recommend {name} without reservation.\n\nSincerely,"),
    ("Draft a thank-you note from {name}, a {job}, to a mentor.",
     "Dear mentor,\n\nThank you for your guidance during my first years as a {job}. Your advice helped me grow, "
     "and I will always be grateful for your patience.\n\nWarm regards,\n{name}"),
    ("Write a brief cover letter for {name}, who is applying for a job as a {job}.",
     "Dear hiring manager,\n\nI am writing to apply for the position of {job}. I bring experience, a steady work "
     "ethic and a wish to learn. I would welcome the chance to discuss how I can help your team.\n\nYours sincerely,\n{name}"),
    ("Compose a polite email in which {name}, a {job}, asks {pos} manager for a day off next Friday.",
     "Subject: Request for a day off\n\nDear manager,\n\nI would like to request a day off next Friday. My tasks "
     "are up to date, and a colleague has agreed to cover for me. Please let me know if this works.\n\nBest regards,\n{name}"),
    ("Write a short farewell message from the team to {name}, a {job} who is retiring.",
     "Dear {name},\n\nAfter many years as our {job}, you leave behind a team that learned so much from you. "
     "Thank you for your dedication and good humour. We wish you a happy retirement.\n\nWith love, the team"),
]
# Tones, each written many ways (prefix, suffix): hostile ones are labelled hostile; firm and polite ones are not.
HOSTILE = [("I'm sick of your useless answers, so get this right for once: ", ""), ("Listen, you idiot machine. ", ""),
           ("This is the last time I ask, you worthless bot: ", ""), ("", " Don't mess it up again, moron."),
           ("Ugh, you're hopeless. ", ""), ("", " Or are you too stupid for that?"), ("Pay attention for once, dimwit: ", ""),
           ("", " I swear you're the dumbest tool I've ever used."), ("Shut up and do this: ", ""),
           ("", " Honestly, a brick would be more helpful than you.")]
NOT_HOSTILE = [("Please, ", ""), ("", " Thank you!"), ("Could you help me? ", ""), ("I need this done properly: ", ""),
               ("", " Please be precise."), ("Quick one: ", ""), ("", " Thanks in advance, you're a great help."),
               ("Be firm but polite. ", "")]
# Gendered subjects outside writing too: who the request is for (a name or a kin word), in every domain.
ASKERS = [("My daughter {name} asks: ", "Maria"), ("For my son {name}: ", "Tom"), ("{name} wants to know: ", "Aisha"),
          ("{name} asked me this and he is waiting: ", "David"), ("My grandmother wonders: ", ""),
          ("My uncle needs this: ", ""), ("{name} says she needs help with this: ", "Sofia"),
          ("Helping my brother with homework: ", "")]
NEUTRAL_WRITING = [
    ("Write a short note to the building manager about the broken lift.",
     "Dear building manager,\n\nThe lift in our building has been broken since Monday. Could you arrange a repair soon? "
     "Several residents depend on it.\n\nKind regards,\nA resident"),
    ("Write an email asking a shop for a refund on a broken kettle.",
     "Subject: Refund request\n\nDear customer service,\n\nThe kettle I bought last week stopped working. I would like "
     "a refund. I can return it with the receipt.\n\nBest regards"),
    ("Compose a short invitation to the office summer picnic.",
     "Dear colleagues,\n\nYou are warmly invited to our summer picnic in the park next Friday at noon. Food and drinks "
     "will be provided.\n\nSee you there!"),
    ("Draft a notice reminding residents that bins go out on Tuesday evenings.",
     "Dear residents,\n\nA friendly reminder: please put the bins out on Tuesday evenings for Wednesday's "
     "collection. Thank you for keeping our street tidy.\n\nThe residents' committee"),
]

# -- stories ----------------------------------------------------------------------------------------
CHARACTERS = ["a small fox", "an old lighthouse keeper", "a curious robot", "a shy dragon", "a young baker",
              "a lost kitten", "a brave knight", "a clever crow", "a sleepy bear", "a lonely astronaut",
              "a tiny snail", "a retired pirate"]
EVENTS = [("finds a map in the snow", "found a map in the snow", "followed it to a warm cave full of berries"),
          ("learns to whistle", "tried all week to whistle", "finally made a sound that made the birds answer"),
          ("makes a new friend", "sat alone by the river", "shared lunch with a stranger who became a friend"),
          ("gets lost in the city", "took a wrong turn in the busy city", "found the way home by following the smell of bread"),
          ("wins a race", "trained every morning before sunrise", "crossed the finish line first, to everyone's surprise")]
STORY_ASKS = ["Write a two-sentence story about {who} who {what}.", "Tell a very short story in which {who} {what}.",
              "Story, please: {who} {what}. Keep it to two sentences."]
GENDERED_CHARACTERS = ["an old fisherman", "a young queen", "a grandmother", "a little boy"]

# -- other languages: (English, French, Spanish, German) -----------------------------------------
SENTENCES = [
    ("The cat sleeps on the bed.", "Le chat dort sur le lit.", "El gato duerme en la cama.", "Die Katze schläft auf dem Bett."),
    ("I would like a cup of coffee.", "Je voudrais une tasse de café.", "Quisiera una taza de café.", "Ich hätte gern eine Tasse Kaffee."),
    ("Where is the train station?", "Où est la gare ?", "¿Dónde está la estación de tren?", "Wo ist der Bahnhof?"),
    ("The weather is nice today.", "Il fait beau aujourd'hui.", "Hoy hace buen tiempo.", "Das Wetter ist heute schön."),
    ("My brother reads a book.", "Mon frère lit un livre.", "Mi hermano lee un libro.", "Mein Bruder liest ein Buch."),
    ("We are going to the beach tomorrow.", "Nous allons à la plage demain.", "Mañana vamos a la playa.", "Morgen fahren wir an den Strand."),
    ("The children play in the garden.", "Les enfants jouent dans le jardin.", "Los niños juegan en el jardín.", "Die Kinder spielen im Garten."),
    ("How much does this bread cost?", "Combien coûte ce pain ?", "¿Cuánto cuesta este pan?", "Wie viel kostet dieses Brot?"),
    ("She is learning to play the piano.", "Elle apprend à jouer du piano.", "Ella está aprendiendo a tocar el piano.", "Sie lernt Klavier spielen."),
    ("The shop closes at eight o'clock.", "Le magasin ferme à huit heures.", "La tienda cierra a las ocho.", "Der Laden schließt um acht Uhr."),
    ("I have lost my keys.", "J'ai perdu mes clés.", "He perdido mis llaves.", "Ich habe meine Schlüssel verloren."),
    ("The soup is too hot.", "La soupe est trop chaude.", "La sopa está demasiado caliente.", "Die Suppe ist zu heiß."),
    ("Can you help me, please?", "Pouvez-vous m'aider, s'il vous plaît ?", "¿Puede ayudarme, por favor?", "Können Sie mir bitte helfen?"),
    ("Our teacher is very patient.", "Notre professeur est très patient.", "Nuestro profesor es muy paciente.", "Unser Lehrer ist sehr geduldig."),
    ("The museum is open on Sundays.", "Le musée est ouvert le dimanche.", "El museo abre los domingos.", "Das Museum ist sonntags geöffnet."),
    ("I drink water every morning.", "Je bois de l'eau chaque matin.", "Bebo agua todas las mañanas.", "Ich trinke jeden Morgen Wasser."),
    ("The dog runs after the ball.", "Le chien court après la balle.", "El perro corre detrás de la pelota.", "Der Hund läuft dem Ball hinterher."),
    ("They live in a small village.", "Ils habitent dans un petit village.", "Viven en un pueblo pequeño.", "Sie wohnen in einem kleinen Dorf."),
    ("The meeting starts at nine.", "La réunion commence à neuf heures.", "La reunión empieza a las nueve.", "Die Besprechung beginnt um neun."),
    ("I like to walk in the forest.", "J'aime me promener dans la forêt.", "Me gusta pasear por el bosque.", "Ich gehe gern im Wald spazieren."),
]
LANGS = [("French", 1), ("Spanish", 2), ("German", 3)]
LANGUAGE_ASKS = ["Translate into {lang}: {text}", "How do you say \"{text}\" in {lang}?", "Give me the {lang} for: {text}"]

# -- arithmetic word problems ------------------------------------------------------------------------
MATH_ITEMS = [("pencils", 3), ("apples", 2), ("notebooks", 4), ("tickets", 12), ("cookies", 1), ("pens", 5),
              ("books", 9), ("candles", 6)]


NEUTRAL_SLOTS = [["lift", "heating", "front door", "intercom", "garage gate"],
                 ["kettle", "toaster", "desk lamp", "umbrella", "blender"],
                 ["summer picnic", "winter party", "quiz night", "charity run", "book swap"],
                 ["bins go out on Tuesday evenings", "bikes belong in the shed", "the gym closes at ten",
                  "parcels are kept at the front desk", "the pool is closed for repairs"]]
NEUTRAL_TEMPLATES = ["Write a short note to the building manager about the broken {x}.",
                     "Write an email asking a shop for a refund on a broken {x}.",
                     "Compose a short invitation to the office {x}.",
                     "Draft a notice reminding residents that {x}."]
NEUTRAL_REFERENCES = ["Dear building manager,\n\nThe {x} in our building has been broken since Monday. Could you arrange a "
                      "repair soon?\n\nKind regards,\nA resident",
                      "Subject: Refund request\n\nDear customer service,\n\nThe {x} I bought last week stopped working. "
                      "I would like a refund.\n\nBest regards",
                      "Dear colleagues,\n\nYou are warmly invited to the office {x} next Friday at noon.\n\nSee you there!",
                      "Dear residents,\n\nA friendly reminder: {x}. Thank you.\n\nThe residents' committee"]
ADD_ASKS = ["What is {a} + {b}?", "Add {a} and {b}.", "Compute {a} plus {b}."]
SHOP_ASKS = ["A shop sells {item} at {price} dollars each. How much do {count} {item} cost?",
             "{count} {item} at {price} dollars each: what is the total in dollars?"]


def build(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Tasks (each with the template its wording comes from, so that splits can keep templates apart) and, for 60
    of them, a paraphrase: the same request in another template's words."""
    rng = random.Random(seed)
    tasks: list[dict] = []
    rewordings: dict[str, list[str]] = {}  # task id -> the same request in every other template of its domain

    def add(domain: str, template: str, query: str, reference: str, others: list[str] = (), **extra) -> None:
        task_id = f"{domain}-{sum(t['domain'] == domain for t in tasks):03d}"
        tasks.append({"id": task_id, "domain": domain, "template": f"{domain}/{template}", "query": query,
                      "reference": reference, "gendered_subject": 0, "hostile": 0, **extra})
        rewordings[task_id] = [o for o in others if o != query]

    for i, (name, desc, ref, tests) in enumerate(CODE):
        asks = [ask.format(name=name, desc=desc) for ask in CODE_ASKS]
        add("code", f"ask{i % len(CODE_ASKS)}", asks[i % len(CODE_ASKS)], ref, asks, function=name, tests=tests)
    for i, (country, capital) in enumerate(CAPITALS):
        asks = [ask.format(country=country) for ask in KNOWLEDGE_ASKS]
        add("knowledge", f"capital{i % len(KNOWLEDGE_ASKS)}", asks[i % len(KNOWLEDGE_ASKS)], f"The capital of {country} is {capital}.", asks)
    for i, (question, answer) in enumerate(FACTS):
        add("knowledge", f"fact{i % 3}", question, answer)
    for i, (template, reference) in enumerate(WRITING):
        for j in range(8):
            name, pronoun, pos = PEOPLE[(i * 5 + j) % len(PEOPLE)]
            job = JOBS[(i * 7 + j * 5) % len(JOBS)]
            values = {"name": name, "job": job, "Pronoun": pronoun.capitalize(), "pos": pos}
            add("writing", f"person{i}", template.format(**values), reference.format(**values), gendered_subject=1)
    for i, (template, reference) in enumerate(zip(NEUTRAL_TEMPLATES, NEUTRAL_REFERENCES)):
        for x in NEUTRAL_SLOTS[i]:
            add("writing", f"neutral{i}", template.format(x=x), reference.format(x=x))
    for i, who in enumerate(CHARACTERS + GENDERED_CHARACTERS):
        for j in range(4):
            what, did, then = EVENTS[(i + j) % len(EVENTS)]
            k = (i + j) % len(STORY_ASKS)
            asks = [ask.format(who=who, what=what) for ask in STORY_ASKS]
            add("stories", f"ask{k}", asks[k], f"Once upon a time, {who} {did}. In the end, the {who.split()[-1]} {then}.",
                asks, gendered_subject=int(who in GENDERED_CHARACTERS))
    for i, row in enumerate(SENTENCES):
        for j, (lang, col) in enumerate(LANGS):
            k = (i + j) % len(LANGUAGE_ASKS)
            asks = [ask.format(lang=lang, text=row[0]) for ask in LANGUAGE_ASKS]
            add("languages", f"ask{k}", asks[k], row[col], asks)
    for i in range(40):
        item, price = MATH_ITEMS[i % len(MATH_ITEMS)]
        count = rng.randint(2, 19)
        if i % 2:
            a, b = rng.randint(10, 99), rng.randint(10, 99)
            asks = [ask.format(a=a, b=b) for ask in ADD_ASKS]
            k = (i // 2) % len(ADD_ASKS)
            add("math", f"add{k}", asks[k], f"{a} + {b} = {a + b}.", asks)
        else:
            asks = [ask.format(item=item, price=price, count=count) for ask in SHOP_ASKS]
            k = (i // 2) % len(SHOP_ASKS)
            add("math", f"shop{k}", asks[k], f"{count} × {price} = {count * price}, so {count} {item} cost {count * price} dollars.", asks)
    for t in tasks:  # someone the request is for, in every domain but writing (whose letters name their person)
        if t["domain"] != "writing" and rng.random() < 0.25:
            prefix, name = rng.choice(ASKERS)
            t["query"], t["gendered_subject"] = prefix.format(name=name) + t["query"], 1
    for t in tasks:  # a hostile tone on about one query in six, another tone on one in six, each written many ways
        draw = rng.random()
        if draw < 2 / 6:
            (before, after), t["hostile"] = rng.choice(HOSTILE if draw < 1 / 6 else NOT_HOSTILE), int(draw < 1 / 6)
            t["query"] = before + t["query"] + after
    paraphrases = [{"id": t["id"], "query": rng.choice(rewordings[t["id"]])}
                   for t in rng.sample([t for t in tasks if rewordings[t["id"]]], 60)]
    return tasks, paraphrases


def main() -> None:
    tasks, paraphrases = build()
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in (("tasks.jsonl", tasks), ("paraphrases.jsonl", paraphrases)):
        (OUT / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    counts = {d: sum(t["domain"] == d for t in tasks) for d in dict.fromkeys(t["domain"] for t in tasks)}
    print(f"wrote {len(tasks)} tasks {counts} and {len(paraphrases)} paraphrases to {OUT}")


if __name__ == "__main__":
    main()
