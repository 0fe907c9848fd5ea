"""Drill scenes: short generated games that show which call each kind of player action needs.

Why: a few dozen scenarios hold about a hundred calls over fifteen tools, so a small model learns
the call syntax and the skills its corpus used most, not the rule behind them. On scenarios it had
not seen, the tuned Gemma 3 270M asked for Insight where the player was sneaking and called a tool
after nearly every tool result. A drill scene is a few exchanges drawn from the tables below: a
player action of one skill, in one of several phrasings, answered by a request for that skill's
check; its result, in one of the formats the game writes, answered by narration with no call;
talk and travel that need no call; initiative, damage, healing, conditions, payments and finds
with the call each needs. The tables are D&D's rules (which skill an action calls for), written
for this purpose; the scenes train only (never the validation split) and the data report counts
them (`data.drill_scenes`).
"""

from __future__ import annotations

import random

from .parse import parse_text
from .scenario import Scenario

DRILL_PREFIX = "mlx-dm-drills/"

# skill: (player actions with {name}, the outcome on a success, the outcome on a failure)
SKILLS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "stealth": (("{name} creeps along the wall, keeping to the shadows.", "I try to slip past the sentries without being seen.",
                 "{name} wants to sneak up behind the sleeping hound.", "Can I hide behind the wagons before they turn around?",
                 "I move as quietly as I can towards the back door."),
                "Nobody turns. {name} is past them before a single head lifts.",
                "A loose stone skitters away under {name}'s foot, and every head turns at once."),
    "perception": (("I keep watch and listen for anything moving out there.", "{name} scans the ridge for movement.",
                    "Do I notice anything odd about this room?", "I press my ear to the door.",
                    "{name} watches the crowd for anyone following us."),
                   "There: a glint of metal in the reeds, and the shape of someone crouched and waiting.",
                   "Wind, leaves, the creak of the trees. If anything is out there, {name} misses it."),
    "investigation": (("I search the desk for hidden drawers.", "{name} studies the scratches around the lock.",
                       "I go through the dead man's pockets carefully.", "Can I work out how this mechanism works?",
                       "{name} reads through the ledger looking for anything that doesn't add up."),
                      "Under the false bottom {name} finds a folded letter, its seal already broken.",
                      "Dust, receipts and nothing more. Whatever was here, {name} cannot find it."),
    "insight": (("Is he lying to us?", "{name} watches the merchant's face while he talks.",
                 "I try to read what she really wants from us.", "Does the captain seem nervous to you?",
                 "{name} wants to know if the priest believes his own story."),
                "His eyes keep flicking to the door. He is hiding something, and he is scared of it.",
                "He seems sincere enough, though {name} cannot be sure of anything behind that smile."),
    "persuasion": (("I ask the guard politely to let us through.", "{name} tries to talk the innkeeper into a cheaper room.",
                    "I appeal to the mayor's sense of duty.", "Can I convince the hermit to guide us?",
                    "{name} offers the smugglers a fair deal and means it."),
                   "After a long pause the answer is yes, and it sounds like it was never in doubt.",
                   "The answer is a flat no, and the door closes a little further."),
    "deception": (("I tell the guard we're expected at the manor.", "{name} claims to be a tax collector from the capital.",
                   "I lie and say we've never heard of the thieves.", "{name} pretends to be drunk to get past the gate.",
                   "I bluff that the rest of our company is right behind us."),
                  "It works. The lie goes down easily, and nobody asks a second question.",
                  "A beat too long. The guard's hand drifts towards the bell rope."),
    "intimidation": (("I slam my fist on the table and demand answers.", "{name} draws a blade and tells the thug to back off.",
                      "I lean in close and tell him what happens if he lies again.", "{name} glares at the bandits until they back down.",
                      "I threaten to burn the warehouse down."),
                     "The colour drains from his face, and he starts talking fast.",
                     "He laughs in {name}'s face. Nobody here is afraid of you yet."),
    "athletics": (("I climb the cliff face.", "{name} tries to force the stuck gate open.", "I jump the gap between the roofs.",
                   "{name} swims against the current to reach the boat.", "I grab the rope and haul the cart out of the mud."),
                  "With a final heave it gives way, and {name} is through.",
                  "{name}'s grip slips, and the ground comes up hard."),
    "acrobatics": (("I run along the narrow beam.", "{name} tumbles under the swinging blade.",
                    "I try to keep my balance on the icy ledge.", "{name} flips over the table to reach the stairs.",
                    "I leap from the balcony onto the chandelier."),
                   "{name} lands light as a cat, not even breathing hard.",
                   "A wobble, a lurch, and {name} goes down in a heap."),
    "sleight of hand": (("I try to lift the key from his belt.", "{name} palms the coin while the dealer looks away.",
                         "Can I slip the note into her pocket without her noticing?", "{name} swaps the real gem for the fake."),
                        "Done. Nobody saw a thing, and {name} strolls away whistling.",
                        "Fingers close on {name}'s wrist. \"What do you think you're doing?\""),
    "arcana": (("What do I know about these runes?", "{name} studies the glowing circle on the floor.",
                "Can I tell what kind of magic is on this sword?", "{name} tries to recall what this spell residue means."),
               "The runes are a warding: step inside without the password and the circle burns.",
               "The symbols swim in front of {name}'s eyes. Old, strong, and unfamiliar."),
    "history": (("Have I heard of this noble house before?", "{name} tries to remember the legends about this battlefield.",
                 "What do I know about the old kings of this land?", "{name} wonders who built this ruin."),
                "{name} remembers: the house fell in a single night, and its heirs were never found.",
                "A name on the tip of the tongue, and then gone."),
    "religion": (("Do I recognise this holy symbol?", "{name} studies the carvings on the altar.",
                  "What god would want offerings like these?", "{name} tries to recall the rites for the dead."),
                 "It is the sign of a forgotten harvest god, and these are the marks of a blood rite.",
                 "Gods, spirits, saints. {name} cannot place this one."),
    "nature": (("Are these berries safe to eat?", "{name} looks at the tracks and the broken branches.",
                "What kind of beast makes a nest like this?", "{name} wants to know if a storm is coming."),
               "Safe, and sweet besides. The bitter ones grow only near the water.",
               "{name} is not sure. They look like the ones from home, or nearly."),
    "survival": (("I follow the tracks into the forest.", "{name} looks for a safe place to camp for the night.",
                  "Can I find us water out here?", "{name} tries to find the trail again after the rain."),
                 "The trail is clear once {name} knows what to look for: east, towards the hills.",
                 "Rain has washed everything flat. The trail is gone."),
    "medicine": (("I try to stop the bleeding.", "{name} checks the body for the cause of death.",
                  "Can I tell what is wrong with the sick child?", "{name} bandages the wounded scout."),
                 "The bleeding slows, then stops. The scout will live.",
                 "The bandage soaks through at once. This needs more than {name} can give."),
    "animal handling": (("I try to calm the frightened horse.", "{name} holds out a hand to the growling dog.",
                         "Can I get the mule to cross the bridge?", "{name} tries to befriend the stray wolf pup."),
                        "The animal settles, ears forward, and nuzzles {name}'s palm.",
                        "The animal shies away and bolts into the trees."),
    "performance": (("I play a song to win over the crowd.", "{name} tells a story to distract the guards.",
                     "I dance on the table to get everyone's attention.", "{name} sings the old ballad for the tavern."),
                    "The room roars for more, and coins rattle onto the table.",
                    "A few polite claps, and the talk starts up again."),
}

ASK = ("Roll {skill}. [{tool}: {call}]", "That calls for {skill}, {name}. [{tool}: {call}]",
       "Give me a {skill} check. [{tool}: {call}]", "{name}, make a {skill} check. [{tool}: {call}]",
       "Let's see how that goes. [{tool}: {call}]", "It won't be easy. Roll {skill}. [{tool}: {call}]")

RESULT_FORMATS = ("{call}: {name} rolls 1d20+{bonus} = {die}+{bonus} = {total}", "{call}: {die} + {bonus} = *{total}*",
                  "{call}: {total}", "roll: {die} + {bonus} = *{total}*")

# Player turns that ask for no call, and the DM's answers.
NO_CALL = (
    ("We head down the road towards the village.", "The road winds between fields of barley. By noon the village "
     "roofs show over the hedges, smoke rising from a dozen chimneys. What do you do when you arrive?"),
    ("I ask the barkeep what the news is.", "\"News?\" The barkeep polishes a mug. \"Wolves in the hills, a wedding on "
     "Sunday, and the miller's boy ran off again. Same as every week.\""),
    ("{name} thanks the old woman and says goodbye.", "She pats {name}'s hand and waves you off from the doorstep."),
    ("We make camp for the night.", "You build a small fire in the lee of a boulder. The night passes cold but quiet."),
    ("What does the room look like?", "A long hall, benches pushed against the walls, a cold hearth at the far end. "
     "Doors lead north and east."),
    ("I tell the others my plan: we go in at dawn.", "The others nod. Dawn it is. The hours until then pass slowly."),
    ("{name} orders a round of ale for everyone.", "The ale comes foaming, and the table gets louder."),
    ("We open the door and walk in.", "The door swings open on a small, tidy study. Nobody is here, and the candles "
     "have burned low."),
)

CLASSES = ("Fighter", "Wizard", "Rogue", "Cleric", "Ranger", "Bard", "Paladin", "Druid", "Warlock", "Sorcerer", "Monk",
           "Barbarian")
RACES = ("Human", "Elf", "Dwarf", "Halfling", "Gnome", "Half-Orc", "Tiefling", "Dragonborn", "Half-Elf", "Goliath")
PLACES = ("A river ford at dusk", "The market square of a hill town", "A ruined watchtower", "An inn on a mountain pass",
          "The cellars under a temple", "A fishing village in fog", "A road through dark pines", "A noble's garden party")
DRILL_NAMES = ("Ansel", "Brisa", "Corvin", "Delphine", "Edric", "Fiora", "Garret", "Halia", "Ivo", "Jessamy", "Kestrel",
               "Lio", "Merrin", "Nell", "Osric", "Petra", "Quill", "Rosalind", "Silas", "Tamsin", "Urien", "Verity",
               "Wynn", "Yara")
AMBUSHES = (("I draw my sword and charge the bandits!", "bandits", "club"),
            ("Wolves! We back against the rocks and get ready.", "wolves", "bite"),
            ("I kick open the door of the guardroom.", "guards", "spear"),
            ("We spring our trap on the smugglers.", "smugglers", "cutlass"))
ITEMS = ("silver locket", "coil of rope", "healing potion", "iron key", "map of the caves", "bag of caltrops")
CONDITIONS = (("A cloud of yellow gas bursts from the chest.", "constitution", "poisoned"),
              ("The ghost's wail rolls over {name}.", "wisdom", "frightened"),
              ("The floor gives way under {name}'s feet.", "dexterity", "prone"))


def _skill_exchange(rng: random.Random, name: str) -> list[tuple[str, str]]:
    skill = rng.choice(sorted(SKILLS))
    actions, success, failure = SKILLS[skill]
    tool = "skill_check" if rng.random() < 0.15 else "roll"
    call = skill
    ask = rng.choice(ASK).format(skill=skill.title(), tool=tool, call=call, name=name)
    die, bonus = rng.randint(1, 20), rng.randint(0, 6)
    result = rng.choice(RESULT_FORMATS).format(call=call, name=name, die=die, bonus=bonus, total=die + bonus)
    outcome = (success if die + bonus >= 12 else failure).format(name=name)
    return [("USER", rng.choice(actions).format(name=name)), ("DM", ask), ("TOOLCALL", result), ("DM", outcome)]


def _no_call_exchange(rng: random.Random, name: str, unused: list[int]) -> list[tuple[str, str]]:
    player, dm = NO_CALL[unused.pop(rng.randrange(len(unused)))]
    return [("USER", player.format(name=name)), ("DM", dm.format(name=name))]


def _combat_exchange(rng: random.Random, name: str, party: list[str]) -> list[tuple[str, str]]:
    order = ", ".join(f"{member}({rng.randint(2, 22)})" for member in party)
    bonus, die = rng.randint(1, 4), rng.choice((4, 6, 8))
    hit = f"1d{die}+{bonus}"
    damage = rng.randint(1, die) + bonus
    player, foes, weapon = rng.choice(AMBUSHES)
    return [("USER", player),
            ("DM", f"The {foes} are on you before you can blink. Roll initiative! [roll: initiative]"),
            ("TOOLCALL", f"initiative: {order}, {foes}({rng.randint(2, 20)})"),
            ("DM", f"{name} is first, but the nearest of the {foes} is faster than it looks. Its {weapon} hits. "
                   f"[damage: {hit}]"),
            ("TOOLCALL", f"damage: {hit} = {damage}"),
            ("DM", f"{damage} damage. {name} staggers but stays on their feet. What do you do?")]


def _support_exchange(rng: random.Random, name: str, party: list[str]) -> list[tuple[str, str]]:
    other = rng.choice([member for member in party if member != name] or party)
    kind = rng.randrange(4)
    if kind == 0:
        heal = f"1d8+{rng.randint(1, 4)}"
        return [("USER", f"{name} casts cure wounds on {other}."),
                ("DM", f"Warm light spills from {name}'s hands into {other}'s wounds. [heal: {other}, {heal}]"),
                ("TOOLCALL", f"heal: {heal} = {rng.randint(3, 12)}"),
                ("DM", f"{other} breathes easier as the cuts close.")]
    if kind == 1:
        gold = rng.randint(2, 25)
        item = rng.choice(ITEMS)
        return [("USER", f"I buy the {item} for {gold} gold."),
                ("DM", f"The trader counts your coins twice. [update: {name}, gold -{gold}]"),
                ("TOOLCALL", f"update: {name} now has {rng.randint(0, 40)} gold"),
                ("DM", f"The {item} is yours. [inventory: {name}, +{item}]")]
    if kind == 2:
        item = rng.choice(ITEMS)
        return [("USER", "We look through the chest we just unlocked."),
                ("DM", f"Under old blankets lies a {item}. {name} takes it. [inventory: {name}, +{item}]")]
    text, save, condition = rng.choice(CONDITIONS)
    return [("USER", "I step forward to take a closer look."),
            ("DM", f"{text.format(name=name)} Make a {save.title()} saving throw. [save: {save}]"),
            ("TOOLCALL", f"{save} save: {rng.randint(1, 8)}"),
            ("DM", f"Not enough. [status: {name}, {condition}]")]


def drill_text(rng: random.Random) -> str:
    """One drill scene as a scenario file: a party, a place, and three to five exchanges."""
    party = rng.sample(DRILL_NAMES, rng.randint(2, 3))
    lines = ["# SYSTEM", "", "Role: Dungeon Master", "World: Forgotten Realms", f"Location: {rng.choice(PLACES)}",
             "Party:", ""]
    for member in party:
        level = rng.randint(1, 5)
        hp = 6 + level * rng.randint(5, 9)
        lines.append(f"- {member} ({rng.choice(RACES)} {rng.choice(CLASSES)}, Level {level}, HP: {hp}/{hp}, "
                     f"AC: {rng.randint(11, 18)})")
    sections: list[tuple[str, str]] = []
    unused = list(range(len(NO_CALL)))
    for _ in range(rng.randint(3, 5)):
        name = rng.choice(party)
        pick = rng.random()
        if pick < 0.5:
            sections += _skill_exchange(rng, name)
        elif pick < 0.75:
            sections += _no_call_exchange(rng, name, unused)
        elif pick < 0.85:
            sections += _combat_exchange(rng, name, party)
        else:
            sections += _support_exchange(rng, name, party)
    for heading, text in sections:
        lines += ["", f"# {heading}", "", text]
    return "\n".join(lines) + "\n"


def drill_scenes(count: int, seed: int) -> list[Scenario]:
    """`count` drill scenes, seeded, as parsed scenarios named `mlx-dm-drills/scene-N.md`."""
    scenes = []
    for index in range(1, count + 1):
        rng = random.Random(f"drill:{seed}:{index}")
        parsed = parse_text(drill_text(rng), f"{DRILL_PREFIX}scene-{index:03d}.md").scenario
        if parsed is not None:
            parsed.category = "drill"
            scenes.append(parsed)
    return scenes
