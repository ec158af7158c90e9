"""The embedded demo corpus: simple short stories in the spirit of TinyStories, built from templates.

A story is a pure function of (seed, index), so a corpus is reproducible, needs no download, and can
be as large as asked (about 200 words a story; a million stories is two hundred million words).
Each story draws a hero, a friend, a grown-up, a place with its own games and hiding spots, an
object and one of several plots (a lost toy, a new friend, a fear overcome, sharing, helping an
animal, baking, a rainy day); every step of a plot has several wordings.
"""
from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llamalab.files import atomic_output


@dataclass(frozen=True)
class Character:
    name: str
    kind: str  # "girl", "boy", "puppy", ...
    he: str  # subject pronoun
    him: str  # object pronoun
    his: str  # possessive


def _people(names: str, kind: str, he: str, him: str, his: str) -> list[Character]:
    return [Character(name, kind, he, him, his) for name in names.split()]


GIRLS = _people("Lily Mia Sara Anna Lucy Emma Zoe Amy Ella Rose Kate Maya Sophie Lena Ruby Nora Jane Molly Daisy Sue",
                "girl", "she", "her", "her")
BOYS = _people("Tom Ben Max Sam Tim Jack Leo Finn Jake Noah Oliver Eli Owen Luke Dan Bob Joe Alex Toby Ned",
               "boy", "he", "him", "his")
ANIMALS = [
    Character(name, kind, he, him, his)
    for name, kind, (he, him, his) in [
        ("Spot", "puppy", ("he", "him", "his")), ("Fluffy", "kitten", ("she", "her", "her")),
        ("Hoppy", "bunny", ("he", "him", "his")), ("Quack", "duck", ("he", "him", "his")),
        ("Bella", "cat", ("she", "her", "her")), ("Rex", "dog", ("he", "him", "his")),
        ("Pip", "mouse", ("he", "him", "his")), ("Coco", "monkey", ("she", "her", "her")),
        ("Benny", "bear", ("he", "him", "his")), ("Tweety", "bird", ("she", "her", "her")),
        ("Freddy", "frog", ("he", "him", "his")), ("Penny", "pig", ("she", "her", "her")),
        ("Sly", "fox", ("he", "him", "his")), ("Shelly", "turtle", ("she", "her", "her")),
        ("Nutty", "squirrel", ("he", "him", "his")), ("Ellie", "elephant", ("she", "her", "her")),
    ]
]
GROWN_UPS = [("mom", "she", "her"), ("dad", "he", "his"), ("grandma", "she", "her"), ("grandpa", "he", "his")]


@dataclass(frozen=True)
class Place:
    name: str  # "the park"
    at: str  # "at the park", "in the garden", "on the farm"
    games: tuple[str, ...]  # "swing on the swings": what one does there
    spots: tuple[str, ...]  # "under a bench": where something can hide
    sights: tuple[str, ...]  # "tall trees": what one sees there


PLACES = [
    Place("the park", "at the park", ("swing on the swings", "slide down the big slide", "play tag", "kick a ball"),
          ("under a bench", "behind a big tree", "in the tall grass", "near the pond"),
          ("tall trees", "green grass", "ducks on the pond", "many children")),
    Place("the beach", "at the beach",
          ("build a sand castle", "look for shells", "splash in the waves", "dig a big hole"),
          ("under a pile of sand", "behind a big rock", "near the water", "under a towel"),
          ("blue water", "white shells", "big waves", "soft sand")),
    Place("the garden", "in the garden", ("water the flowers", "look for bugs", "pick red tomatoes", "dig in the dirt"),
          ("under a big leaf", "behind the flower pots", "in the bushes", "next to the fence"),
          ("pretty flowers", "busy bees", "green plants", "a little worm")),
    Place("the forest", "in the forest", ("pick berries", "look for pinecones", "climb a log", "listen to the birds"),
          ("under a pile of leaves", "inside a hollow log", "behind a bush", "under a big mushroom"),
          ("tall trees", "a little squirrel", "soft moss", "colorful leaves")),
    Place("the farm", "on the farm", ("feed the chickens", "pet the cows", "ride on the tractor", "play in the hay"),
          ("in the hay", "behind the barn", "inside the chicken coop", "under the tractor"),
          ("a big red barn", "happy pigs", "a brown horse", "fat sheep")),
    Place("the playground", "at the playground",
          ("go down the slide", "climb the jungle gym", "play on the seesaw", "swing high"),
          ("under the slide", "in the sandbox", "behind the swings", "next to the gate"),
          ("a tall slide", "red swings", "a big sandbox", "many kids")),
    Place("the backyard", "in the backyard",
          ("jump on the trampoline", "play catch", "blow bubbles", "run in the sprinkler"),
          ("under the porch", "behind the shed", "in the flower bed", "under the picnic table"),
          ("a green lawn", "a little shed", "a bird house", "a big oak tree")),
    Place("the lake", "at the lake",
          ("throw stones in the water", "feed the ducks", "sail a toy boat", "look for frogs"),
          ("under the dock", "near the reeds", "behind a rock", "in the tall grass"),
          ("calm water", "white ducks", "a small boat", "green frogs")),
    Place("the zoo", "at the zoo", ("watch the monkeys", "see the lions", "feed the goats", "look at the penguins"),
          ("under a bench", "near the fence", "behind a bush", "by the water fountain"),
          ("a tall giraffe", "funny monkeys", "a big elephant", "sleepy lions")),
    Place("the hill", "on the hill", ("roll down the grass", "fly a kite", "look at the clouds", "run to the top"),
          ("behind a big stone", "in the long grass", "under a small tree", "near the path"),
          ("the whole town", "white clouds", "yellow flowers", "a windy sky")),
    Place("the river", "by the river", ("skip flat stones", "catch little fish", "build a dam", "float leaf boats"),
          ("under a wooden bridge", "between the rocks", "in the mud", "near an old tree"),
          ("fast water", "a wooden bridge", "shiny fish", "smooth stones")),
    Place("the snowy field", "in the snowy field", ("build a snowman", "make snow angels", "ride a sled",
                                                     "throw snowballs"),
          ("under the snow", "behind a snowman", "near the fence", "in a big snow pile"),
          ("white snow", "icy trees", "a frozen pond", "little footprints")),
    Place("the library", "at the library", ("read picture books", "listen to a story", "build with blocks",
                                             "draw pictures"),
          ("under a table", "behind the bookshelf", "in a basket", "next to a big chair"),
          ("tall shelves", "many books", "a cozy corner", "a friendly librarian")),
]

OBJECTS = ["ball", "kite", "teddy bear", "toy car", "doll", "hat", "book", "stone", "balloon", "crayon", "toy boat",
           "bucket", "scarf", "drum", "blanket", "puzzle", "robot", "whistle", "ribbon", "shell", "toy train",
           "umbrella", "backpack", "necklace", "flute", "spinning top", "yo-yo", "mitten", "toy dinosaur", "bell"]
COLORS = ["red", "blue", "green", "yellow", "pink", "purple", "orange", "shiny", "soft", "little", "new", "big",
          "striped", "sparkly", "tiny", "golden", "brown", "white", "spotted", "fuzzy"]
ADJECTIVES = ["little", "happy", "kind", "curious", "small", "brave", "clever", "gentle", "cheerful", "shy", "funny",
              "busy"]
TIMES = ["one sunny morning", "one cold winter day", "on a warm summer day", "one windy autumn day",
         "one bright spring morning", "one quiet afternoon", "one day", "early one morning"]
TREATS = ["cookies", "a cake", "pancakes", "muffins", "a pie", "bread", "cupcakes", "banana bread", "waffles",
          "an apple pie", "a carrot cake", "lemon cookies"]
HURT_ANIMALS = [("a little bird", "its wing was hurt"), ("a small kitten", "it was stuck in a tree"),
                ("a baby duck", "it could not find its mother"), ("a tiny puppy", "it was cold and wet"),
                ("a little frog", "it was stuck in a net"), ("a baby rabbit", "its paw was hurt")]
FEARS = [("climb the big tree", "climbed higher and higher", "high in the tree"),
         ("swim in the water", "kicked and paddled", "in the water"),
         ("ride a bike", "pedaled and pedaled", "on the bike"),
         ("go down the tall slide", "slid down very fast", "at the bottom"),
         ("jump into the pool", "jumped with a big splash", "in the pool"),
         ("sleep in the dark", "closed {his} eyes", "in {his} cozy bed")]

# Each plot is a list of steps; each step is a list of wordings, one of which is drawn.
# Slots: {hero} {he} {him} {his} {kind}, {friend} {fwho} {fhe} {fhim} {fhis} {fkind}, {adult} {ahe} {ahis},
# {place} {at_place} {game} {game2} {spot} {sight}, {obj} {thing} (= color + object), {treat}, {animal} {trouble},
# {fear} {did} {there}, {time}; a capitalised slot ({He}, {His}, {Hero}...) capitalises its value.
OPENINGS = [
    ["Once upon a time, there was a {adj} {kind} named {hero}.",
     "Once upon a time, in a small town, there lived a {kind} called {hero}.",
     "One day, a {adj} {kind} named {hero} woke up early.",
     "There once was a {kind} named {hero} who loved to play."],
    ["{He} had a {thing} that {he} loved very much.",
     "{His} favorite toy was a {thing}.",
     "{He} liked to {game} {at_place}.",
     "{He} always carried {his} {thing} with {him}."],
]

PLOTS = {
    "lost": [
        ["{Time}, {hero} went to {place} with {his} {adult}.",
         "One morning, {hero} and {his} {adult} walked to {place}.",
         "One day, {hero} took {his} {thing} to {place}."],
        ["{He} wanted to {game}.", "{He} saw {sight} and felt happy.", "{He} played and played all morning."],
        ["When it was time to go home, {hero} could not find {his} {thing}!",
         "After a while, {hero} looked around. {His} {thing} was gone!",
         "Then {hero} saw that {his} {thing} was not there anymore."],
        ["{He} felt very sad and began to cry.", "{He} was sad and {his} eyes filled with tears.",
         "{He} felt worried. Where could it be?"],
        ['"Do not cry, {hero}," said {his} {adult}. "We will find it together."',
         '{His} friend {fwho} came by. "Why are you sad?" asked {friend}. "I lost my {obj}," said {hero}. '
         '"I will help you look," said {friend}.',
         '"Let us look for it," said {his} {adult} with a smile.'],
        ["They looked behind the trees and under the rocks.", "They looked here and there.",
         "They searched all over {place}."],
        ["At last, {hero} found {his} {thing} {spot}!", "Then {hero} saw something {spot}. It was {his} {thing}!",
         "Finally, they found the {obj} {spot}."],
        ['{hero} hugged {his} {obj} and smiled. "Thank you for helping me!" {he} said.',
         "{hero} was so happy. {He} held {his} {obj} tight.",
         '"Hooray!" said {hero}. {He} jumped up and down with joy.'],
        ["From that day on, {hero} always kept {his} {obj} close.",
         "{hero} learned to take good care of {his} things.",
         "They all went home with big smiles."],
    ],
    "friend": [
        ["{Time}, {hero} went to {place}.", "One sunny afternoon, {hero} played alone {at_place}.",
         "One morning, {hero} went to {place} to {game}."],
        ["There, {he} saw a {fkind} named {friend} sitting all alone.",
         "{He} saw a new {fkind} standing by {sight}. {Fhis} name was {friend}.",
         "Near {sight}, there was a {fkind} who looked shy. It was {friend}."],
        ["{hero} felt a little shy too.", "{hero} wanted to say hello, but {he} was a bit scared.",
         "{hero} walked up to {fhim} slowly."],
        ['"Hello, I am {hero}," {he} said. "Do you want to play with me?"',
         '"Hi! Do you want to {game} with me?" asked {hero}.',
         '"Would you like to be my friend?" {hero} asked.'],
        ['{friend} smiled. "Yes, I would love to!" {fhe} said.',
         '{friend} was very happy. "Yes, please!" said {friend}.',
         '{friend} nodded. "I do not have any friends here," {fhe} said.'],
        ["They decided to {game2} together.", "They played together all day.", "They laughed and ran around {place}."],
        ["{hero} shared {his} {thing} with {friend}.", "They took turns and had lots of fun.",
         "The sun went down and it was time to go home."],
        ['"Can we play again tomorrow?" asked {friend}. "Yes!" said {hero}.',
         "{hero} and {friend} became best friends.",
         "From that day on, {hero} and {friend} played together every day."],
    ],
    "fear": [
        ["{hero} wanted to {fear}, but {he} was scared.", "All the other kids could {fear}, but {hero} was afraid.",
         "One day, {hero} said, \"I want to {fear}, but I am scared.\""],
        ['{His} {adult} held {his} hand. "You can do it, {hero}," {ahe} said. "I am right here."',
         '"Everyone is scared sometimes," said {his} {adult}. "Just try one little step."',
         '{His} friend {friend} said, "Be brave, {hero}! I will help you."'],
        ["{hero} took a deep breath.", "{hero} closed {his} eyes and counted to three.",
         "{hero} felt {his} heart beat fast."],
        ["Then {he} {did}.", "Slowly, {he} {did}.", "{He} tried and tried, and then {he} {did}."],
        ['"Look at me!" {he} shouted. "I did it!"', "{He} was {there} and {he} was not scared anymore.",
         '"I did it!" said {hero} with a big smile.'],
        ["{His} {adult} clapped {ahis} hands. \"I am so proud of you!\"",
         "{hero} felt very proud of {him}self.", "Everyone cheered for {hero}."],
        ["{hero} learned that being brave means trying even when you are scared.",
         "From that day on, {hero} was not afraid anymore.", "Now {hero} wants to {fear} every day."],
    ],
    "share": [
        ["One day, {hero} was playing with {his} {thing} {at_place}.",
         "{hero} brought {his} {thing} to {place}.", "{At_place}, {hero} played with {his} new {thing}."],
        ["{fwho} came over. \"Can I play with your {obj}?\" {fhe} asked.",
         "{friend} saw the {obj} and wanted to play with it too.",
         "Soon, {friend} came and asked, \"May I play with your {obj}, please?\""],
        ['"No, it is mine!" said {hero}. {He} did not want to share.',
         "{hero} held the {obj} close. {He} did not want to share.",
         '"No," said {hero}. "I want to play with it alone."'],
        ["{friend} felt sad and walked away.", "{friend} looked down and began to cry.",
         "{friend} sat alone under a tree."],
        ["{hero} saw that {friend} was sad. {He} did not feel good inside.",
         "Then {hero} felt bad. Playing alone was not fun.",
         "{hero} thought about it. {He} did not like to see {his} friend sad."],
        ['{He} walked to {friend} and said, "I am sorry. Let us play together."',
         '{hero} gave the {obj} to {friend}. "You can have a turn," {he} said.',
         '"I am sorry," said {hero}. "We can share my {obj}."'],
        ["{friend} smiled, and they played with the {obj} together.",
         "They took turns with the {obj} and laughed a lot.", "Together they had much more fun."],
        ["{hero} learned that sharing makes everyone happy.", "Sharing is caring, and now they were best friends.",
         "{hero} was glad {he} shared. It felt good to be kind."],
    ],
    "help": [
        ["{Time}, {hero} was walking {at_place}.", "One morning, {hero} went to {place} to {game}.",
         "{hero} and {his} {adult} went for a walk to {place}."],
        ["Suddenly, {he} heard a small sound.", "{He} saw something move {spot}.",
         "Then {he} heard a little cry."],
        ["It was {animal}. {Trouble}.", "{He} looked closer and saw {animal}. {Trouble}.",
         "There was {animal}, and {trouble}."],
        ['"Oh no, poor thing!" said {hero}. "I will help you."', "{hero} felt sorry for the little animal.",
         '"Do not be scared," {hero} said softly. "I am your friend."'],
        ["{hero} called {his} {adult}, and they helped the animal together.",
         "{He} was very gentle and careful.", "{He} picked it up slowly and kept it warm."],
        ["Soon the animal felt better.", "After a while, the little animal was safe and happy.",
         "The animal looked at {hero} with kind eyes."],
        ["{hero} felt warm and happy inside.", '"You are a good helper," said {his} {adult}.',
         "It made a happy sound, as if to say thank you."],
        ["From that day on, {hero} always helped animals in need.",
         "{hero} learned that being kind is the best thing of all.", "{hero} smiled all the way home."],
    ],
    "bake": [
        ["One rainy morning, {hero} wanted to make {treat} with {his} {adult}.",
         '"Can we bake {treat} today?" {hero} asked {his} {adult}.',
         "{hero} and {his} {adult} decided to bake {treat} for {friend}."],
        ['"Yes, let us bake!" said {his} {adult}. They went to the kitchen.',
         "They put on their aprons and got a big bowl.", "{His} {adult} took out flour, eggs, milk and sugar."],
        ["{hero} poured the flour, and a big white cloud flew up!", "{hero} mixed and mixed with a big spoon.",
         "{hero} cracked an egg, but it fell on the floor!"],
        ["They both laughed.", '"Oops!" said {hero}, and {his} {adult} laughed.',
         "There was flour on {his} nose and on {his} hands."],
        ["They put the {treat_noun} in the oven and waited.", "Soon the kitchen smelled sweet and warm.",
         "They cleaned up while the {treat_noun} baked."],
        ["When it was ready, {hero} took a big bite. It was yummy!",
         "They shared the {treat_noun} with {friend}, who said, \"Yummy!\"",
         "{hero} took a bite and said, \"I love {treat_noun}!\""],
        ["{hero} learned that making things with people you love is fun.",
         "It was a happy day, even with the rain.", "{hero} wanted to bake again the next day."],
    ],
    "rain": [
        ["One day, {hero} and {friend} wanted to {game} {at_place}.",
         "{hero} was excited. Today {he} would go to {place} with {friend}."],
        ["But then dark clouds came, and it began to rain.", "But when they looked outside, it was raining hard.",
         "Suddenly, the sky turned gray and rain fell down."],
        ['{hero} was sad. "Now we cannot go out," {he} said.', "{hero} and {friend} felt very sad.",
         '"Oh no!" said {friend}. "What can we do now?"'],
        ['{His} {adult} said, "You can build a fort with the blankets."',
         '{hero} had an idea. "Let us play with my {thing}!"',
         '"We can draw pictures inside," said {his} {adult}.'],
        ["They made a big fort with chairs and blankets.", "They played games and told funny stories.",
         "They drew a picture of {place} with the sun in the sky."],
        ["They had so much fun that they forgot about the rain.", "They laughed and laughed all afternoon.",
         "Soon the rain stopped, and a rainbow came out!"],
        ["{hero} learned that you can have fun on a rainy day too.", "It was the best rainy day ever.",
         '"Rainy days are fun too," said {friend} with a smile.'],
    ],
    "birthday": [
        ["{Time}, {hero} woke up with a big smile. It was {his} birthday!",
         "Today was a special day. It was {friend}'s birthday, and {hero} wanted to make it fun.",
         "{Time}, {hero} remembered that it was {friend}'s birthday."],
        ['{hero} said, "I want to make a present for {friend}."', "{hero} wanted to give {friend} a special gift.",
         "{hero} thought and thought about a nice surprise."],
        ["{He} drew a big picture with bright colors.", "{He} wrapped {his} {thing} in shiny paper with a bow.",
         "{He} picked pretty flowers and tied them with a ribbon."],
        ["Then {he} went to {friend}'s house with {his} {adult}.",
         "{His} {adult} helped {him} bake a small cake with candles on top.",
         "All their friends came and hid behind the door."],
        ['"Surprise!" they all shouted. {friend} jumped and then laughed.',
         '{friend} opened the present. "Wow! Thank you so much!" {fhe} said.',
         "{friend} clapped {fhis} hands. {Fhe} was so surprised!"],
        ["They ate cake, sang songs and played games.", "They danced and laughed until the sun went down.",
         "Everyone had a wonderful time."],
        ["{hero} learned that giving is just as fun as getting.", "It was the best birthday ever.",
         "{friend} gave {hero} a big hug. \"You are my best friend,\" {fhe} said."],
    ],
    "seed": [
        ["{Time}, {hero} found a tiny seed {spot}.", "{His} {adult} gave {hero} a little seed and a pot.",
         '{hero} held a small seed in {his} hand. "What will it grow into?" {he} wondered.'],
        ["{He} dug a hole in the dirt and put the seed inside.", "{He} planted the seed in the soft dirt.",
         "{He} put the seed in a pot by the window."],
        ["Every day, {hero} gave it some water.", "{hero} watered it and waited. Nothing happened.",
         "Each morning, {hero} looked at the dirt, but there was nothing to see."],
        ['"Why is it not growing?" {hero} asked. {He} felt sad.', "{hero} was tired of waiting.",
         '"Maybe it will never grow," said {hero} with a frown.'],
        ['"Be patient," said {his} {adult}. "Good things take time."',
         '{His} {adult} smiled. "Seeds need time, sun and water," {ahe} said.',
         "{friend} said, \"Do not give up. Keep trying.\""],
        ["One day, {hero} saw a tiny green leaf!", "Then one morning, a little sprout came out of the dirt.",
         "After many days, a small green plant popped up."],
        ["The plant grew taller and taller. Soon it had a big yellow flower.",
         "It grew into a tall sunflower, taller than {hero}!", "Soon the plant had red strawberries on it."],
        ["{hero} was so proud. {He} learned that waiting can be worth it.",
         '"We did it!" {hero} said to the flower.', "{hero} shared the fruit with {his} whole family."],
    ],
    "wind": [
        ["{Time}, {hero} took {his} kite to {place}.", "{hero} and {friend} wanted to fly a kite {at_place}.",
         "The wind was strong, so {hero} said, \"Let us fly my kite!\""],
        ["The kite went up, up, up into the sky.", "{hero} ran fast, and the kite flew high.",
         "The kite danced in the wind like a bird."],
        ["Then a big wind came, and the string slipped out of {his} hand!",
         "Suddenly, the kite got stuck in a tall tree.", "But then the string broke, and the kite flew away."],
        ['"My kite!" cried {hero}. {He} felt like crying.', "{hero} was very upset.",
         '{hero} looked up sadly. "How can we get it back?" {he} asked.'],
        ["{friend} had an idea. They asked a tall man to help.",
         "{His} {adult} came with a long stick.", "They followed the kite until it came down {spot}."],
        ["At last, the kite was back in {hero}'s hands.", "Soon the kite was safe again.",
         "Together, they got the kite back."],
        ['"Thank you!" said {hero}. This time, {he} held the string tight.',
         "{hero} hugged {friend}. They flew the kite again, and it was even more fun.",
         "{hero} learned that friends help each other when things go wrong."],
    ],
    "lost_way": [
        ["{Time}, {hero} went to {place} with {his} {adult}.", "{hero} and {his} {adult} went to {place} together."],
        ["{hero} saw a pretty butterfly and ran after it.", "{hero} wanted to see {sight}, so {he} walked away.",
         "{hero} was so busy playing that {he} did not look around."],
        ["When {he} looked up, {his} {adult} was gone!", "Soon {hero} did not know where {he} was.",
         "Then {hero} turned around, but {he} could not see {his} {adult}."],
        ["{hero} was scared. {His} lip began to shake.", '"Where are you?" {hero} called. Nobody answered.',
         "{hero} felt very small and alone."],
        ["Then {he} remembered what {his} {adult} said: \"If you get lost, stay where you are.\"",
         "{He} took a deep breath and tried to be brave.", "A kind lady saw {hero} and asked, \"Are you lost?\""],
        ['Soon {he} heard a voice. "{Hero}! {Hero}!" It was {his} {adult}!',
         "After a little while, {his} {adult} came running.", "The lady helped {hero} find {his} {adult}."],
        ["{hero} ran into {his} {adult}'s arms. They hugged for a long time.",
         '"I was so worried," said {his} {adult}. "I am glad you are safe."',
         "{hero} was so happy to see {his} {adult} again."],
        ["From that day on, {hero} always stayed close to {his} {adult}.",
         "{hero} learned to stay close and be careful.", "They walked home hand in hand."],
    ],
    "clean": [
        ["{hero}'s room was very messy.", "There were toys all over {hero}'s floor.",
         "{Time}, {hero} could not find anything in {his} messy room."],
        ['{His} {adult} said, "Please clean your room before you play."',
         '"It is time to clean up," said {his} {adult}.', "{hero} wanted to play, but first {he} had to clean up."],
        ['"Cleaning is boring," said {hero}. {He} did not want to do it.',
         "{hero} sighed. There was so much to do!", "{hero} sat on the floor and frowned."],
        ["Then {he} had an idea. {He} made cleaning a game!",
         '{friend} came to help. "Let us see who is faster!" said {friend}.',
         "{He} sang a happy song while {he} picked up {his} toys."],
        ["{He} put the books on the shelf and the toys in the box.",
         "They picked up the blocks, the cars and the dolls.", "{He} folded {his} clothes and made {his} bed."],
        ["Under the bed, {he} found {his} {thing} that was lost for a long time!",
         "Soon the room was clean and tidy.", "In a short time, everything was in its place."],
        ['"Wow! Your room looks great!" said {his} {adult}.', "{hero} felt proud of {his} clean room.",
         "Now {he} could find all of {his} toys."],
        ["{hero} learned that cleaning can be fun, too.", "After that, {hero} cleaned up every day.",
         "Then {hero} played with {his} {obj} for the rest of the day."],
    ],
}


def _pick_cast(rng: random.Random) -> tuple[Character, Character]:
    """A hero and a different friend, each a girl, a boy or an animal."""
    hero, friend = (rng.choice(rng.choice([GIRLS, BOYS, ANIMALS])) for _ in range(2))
    while friend.name == hero.name:
        friend = rng.choice(rng.choice([GIRLS, BOYS, ANIMALS]))
    return hero, friend


def _slots(rng: random.Random) -> dict[str, str]:
    hero, friend = _pick_cast(rng)
    adult, ahe, ahis = rng.choice(GROWN_UPS)
    place = rng.choice(PLACES)
    game, game2 = rng.sample(place.games, 2)
    obj = rng.choice(OBJECTS)
    treat = rng.choice(TREATS)
    animal, trouble = rng.choice(HURT_ANIMALS)
    fear, did, there = rng.choice(FEARS)
    return dict(
        hero=hero.name, he=hero.he, him=hero.him, his=hero.his, kind=hero.kind,
        friend=friend.name, fwho=friend.name if friend in GIRLS + BOYS else f"{friend.name} the {friend.kind}",
        fhe=friend.he, fhim=friend.him, fhis=friend.his, fkind=friend.kind,
        adult=adult, ahe=ahe, ahis=ahis, adj=rng.choice(ADJECTIVES),
        place=place.name, at_place=place.at, game=game, game2=game2, spot=rng.choice(place.spots),
        sight=rng.choice(place.sights),
        time=rng.choice(TIMES), obj=obj, thing=f"{rng.choice(COLORS)} {obj}",
        treat=treat, treat_noun=treat.split(" ", 1)[1] if treat.startswith(("a ", "an ")) else treat,
        animal=animal, trouble=trouble, fear=fear, did=did.format(his=hero.his), there=there.format(his=hero.his),
    )


_SLOT = re.compile(r"\{(\w+)\}")
_A_BEFORE_VOWEL = re.compile(r"\b([Aa]) ([aeiou])")  # "a elephant" -> "an elephant"


def _fill(template: str, slots: dict[str, str]) -> str:
    """Replace each {slot}; {Slot} is the value with its first letter capitalised."""
    def value(match: re.Match) -> str:
        key = match.group(1)
        text = slots[key.lower()]
        return text[:1].upper() + text[1:] if key[0].isupper() else text
    return _SLOT.sub(value, template)


def story(seed: int, index: int) -> str:
    """Story number `index` of the corpus drawn with `seed`: the same pair always gives the same text."""
    rng = random.Random(seed * 1_000_003 + index)
    slots = _slots(rng)
    plot = PLOTS[rng.choice(sorted(PLOTS))]
    opening = " ".join(_fill(rng.choice(step), slots) for step in OPENINGS)
    sentences = [_fill(rng.choice(step), slots) for step in plot]
    middle = len(sentences) // 2
    paragraphs = [opening, " ".join(sentences[:middle]), " ".join(sentences[middle:])]
    return _A_BEFORE_VOWEL.sub(r"\1n \2", "\n".join(paragraphs))


def stories(n: int, seed: int = 0) -> Iterator[str]:
    """The first n stories of the corpus drawn with `seed`."""
    return (story(seed, i) for i in range(n))


def write_stories(path: str | Path, n: int, seed: int = 0) -> Path:
    """Write n stories as JSON lines ({"text": ...}), the input `llamalab data prepare` reads; atomically."""
    path = Path(path)
    with atomic_output(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for text in stories(n, seed):
            f.write(json.dumps({"text": text}) + "\n")
    return path
