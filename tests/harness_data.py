"""
Small stand-ins for the Hugging Face hub datasets that twelve lm-evaluation-harness tasks read, row for row in the
hub's schema (same columns, same Python value types as datasets.load_dataset(path, name) gives), so the harness can
run on them offline (gpt/harness.py) and this repo's tasks can be compared with it. Each task has only the splits the
harness reads: the split it evaluates (6 rows: test where the YAML names a test_split, else validation) and the
split it draws few-shot examples from (8 rows: train for all of them; lambada_openai has only test, which serves
for both). The rows carry the quirks each task's processing handles: WikiHow brackets and double spaces
(hellaswag), numeric ARC labels and 3 or 5 choices, '_' in Winogrande sentences, COPA causes and effects, SciQ
supports with leading whitespace or none, TriviaQA aliases differing in case and punctuation.

    import harness_data                     # tests/ is on sys.path under pytest
    folders = harness_data.write(tmp_path)  # {task: tmp_path/<task>}, each holding <split>.jsonl
    run_harness(model_dir, list(folders), folders)   # gpt/harness.py
"""
import json
import pathlib


# ----------------------------------------------------------------------------- hellaswag (Rowan/hellaswag)

def _hellaswag(ind, activity_label, ctx_a, ctx_b, endings, source_id, split, split_type, label):
    # the hub's ctx is ctx_a and ctx_b joined by a space (ctx_a alone where ctx_b is empty, as in most WikiHow rows)
    ctx = f"{ctx_a} {ctx_b}" if ctx_b else ctx_a
    return {'ind': ind, 'activity_label': activity_label, 'ctx_a': ctx_a, 'ctx_b': ctx_b, 'ctx': ctx,
            'endings': endings, 'source_id': source_id, 'split': split, 'split_type': split_type, 'label': label}


HELLASWAG_VALIDATION = [
    _hellaswag(24, "Cleaning windows", "A woman sprays a glass door with a blue liquid.", "she",
               ["throws the bottle across the yard and runs inside.", "paints the door frame a bright orange.",
                "wipes the glass with a folded paper towel in wide circles.", "sits down and reads a magazine."],
               "activitynet~v_aB3xQ9LmP0c", "val", "indomain", "2"),
    _hellaswag(92, "Home and Garden",
               "[header] How to keep basil fresh [title] Trim the stems.  [step] Cut about half an inch off the "
               "bottom of each stem with clean scissors.", "",
               ["[substeps] Place the stems in a glass of water, like a bouquet.  Keep the leaves dry.",
                "[title] Put the basil in the oven overnight. [step] Baked leaves stay green for years.",
                "Throw the stems away and keep only the roots. [substeps] Roots taste best.",
                "[step] Paint the stems with glue so they shine."],
               "wikihow~15023", "val", "zeroshot", "0"),
    _hellaswag(137, "Playing guitar", "A young man sits on a stool holding an acoustic guitar.",
               "the Camera zooms in as he",
               ["eats a sandwich with the guitar on his lap.", "tunes the top string and begins to strum a song.",
                "throws the guitar into a pool.", "falls asleep on the stool."],
               "activitynet~v_Gt7uK2wQx1s", "val", "indomain", "1"),
    _hellaswag(210, "Finance and Business",
               "[header] How to save money on groceries [title] Make a list before you go. [step] Check what "
               "you already have in the fridge and the cupboards. Write down only what you need for the week.",
               "[title] Compare",
               [" prices per kilogram instead of per package.  [substeps] The shelf label often shows both.",
                "the colors of the shopping carts. [step] Pick the red one.",
                "your list with a friend's list and swap them.",
                "the store to a museum. [step] Visit on a holiday."],
               "wikihow~40411", "val", "zeroshot", "0"),
    _hellaswag(318, "Shoveling snow",
               "A man in a thick red coat stands in front of a house after a heavy snowfall. He pushes a wide "
               "shovel along the driveway, lifting snow and tossing it onto a growing pile beside the garage.",
               "a neighbor",
               ["swims across the driveway.", "paints the snow blue with a brush.",
                "waves from across the street and starts clearing the sidewalk.", "sells the house to the man."],
               "activitynet~v_Kp2nR8sYt4e", "val", "indomain", "2"),
    _hellaswag(401, "Mowing the lawn", "A girl pushes a mower.", "she",
               ["cuts the grass in straight lines.", "flies away.", "eats the mower.", "sings to the moon."],
               "activitynet~v_Zq1wE5rTy7u", "val", "indomain", "0"),
]

HELLASWAG_TRAIN = [
    _hellaswag(0, "Washing dishes", "A man stands at a kitchen sink full of plates.", "he",
               ["scrubs each plate with a sponge and rinses it.", "throws the plates out the window.",
                "climbs into the sink.", "plays the plates like drums."],
               "activitynet~v_Hd8fK1lMn2o", "train", "indomain", "0"),
    _hellaswag(1, "Food and Entertaining",
               "[header] How to make iced tea [title] Boil the water. [step] Heat four cups of water until it "
               "bubbles.", "",
               ["[title] Freeze the kettle. [step] Leave it for a month.",
                "[title] Steep the tea bags. [step] Let them sit in the hot water for five minutes.  Then cool it.",
                "Pour the water on the floor. [substeps] Mop it up later.",
                "[step] Add sand for texture."],
               "wikihow~2087", "train", "indomain", "1"),
    _hellaswag(2, "Riding a bike", "A boy wearing a helmet rides a bike down a quiet street.", "then he",
               ["turns into a fish.", "folds the bike into his pocket.",
                "rings the bell and waves at a friend.", "rides up into the clouds."],
               "activitynet~v_Qw3eR4tYu5i", "train", "indomain", "2"),
    _hellaswag(3, "Sports and Fitness",
               "[header] How to stretch before running [title] Warm up first. [step] Walk briskly for five "
               "minutes.", "[substeps]",
               [" Eat a large meal.", " Run as fast as you can at once.", " Sit on the couch.",
                " Then swing your arms and legs gently to loosen them.  Keep breathing steadily."],
               "wikihow~7731", "train", "indomain", "3"),
    _hellaswag(4, "Brushing teeth", "A little girl holds a toothbrush in front of a mirror.", "she",
               ["squeezes toothpaste on the brush and starts brushing.", "paints the mirror green.",
                "throws the toothbrush at the cat.", "puts the brush in the oven."],
               "activitynet~v_Lk9jH8gFd7s", "train", "indomain", "0"),
    _hellaswag(5, "Playing piano", "A woman sits at a grand piano on a stage.", "the Audience watches as she",
               ["eats the keys one by one.", "begins to play a slow melody.", "leaves the stage on a horse.",
                "lifts the piano over her head."],
               "activitynet~v_Mn6bV5cXz4a", "train", "indomain", "1"),
    _hellaswag(6, "Pets and Animals",
               "[header] How to bathe a dog [title] Gather your supplies. [step] You will need dog shampoo, "
               "towels and a cup for rinsing.", "",
               ["[title] Paint the dog. [step] Use bright colors.",
                "[title] Wet the dog with lukewarm water. [step] Avoid the eyes and ears.",
                "Put the dog in the washing machine. [substeps] Use the gentle cycle.",
                "[step] Ask the dog to wash itself."],
               "wikihow~11290", "train", "indomain", "1"),
    _hellaswag(7, "Raking leaves", "Two kids rake leaves into a big pile in the yard.", "they",
               ["jump into the pile and laugh.", "fly to the moon.", "bake the leaves into a cake.",
                "glue the leaves back on the tree."],
               "activitynet~v_Po0iU9yTr8e", "train", "indomain", "0"),
]


# --------------------------------------------------------------------------- lambada_openai (EleutherAI/lambada_openai)

LAMBADA_TEST = [{'text': t} for t in [
    "She opened the old wooden box and found a stack of letters tied with a ribbon. Each one was signed by her "
    "grandfather, who had written to her grandmother every week during the war. She read them slowly, one after "
    "another, until the candle burned down. The last one ended with a promise to come home, and he had kept that "
    "promise",
    "The dog waited by the door every evening. When the key turned in the lock, it barked and wagged its tail",
    "\"Pass me the salt,\" said Tom. Anna reached across the table and handed him the salt",
    "The train was late again, so Maria bought a coffee and sat on a bench. An hour later the loudspeaker "
    "crackled and announced that the train had finally arrived at the platform",
    "He looked up at the sky and saw the first star of the night",
    "After weeks of practice, the team finally won the championship. The coach lifted the shiny cup above his "
    "head while the players cheered. Everyone wanted to hold the cup",
]]


# ---------------------------------------------------------------------------- arc_easy, arc_challenge (allenai/ai2_arc)

def _arc(id, question, texts, answer_key, labels=None):
    # most ARC questions are lettered A..; some (NY Regents ones among them) are numbered "1".."4"
    labels = labels or [chr(ord('A') + i) for i in range(len(texts))]
    return {'id': id, 'question': question, 'choices': {'text': texts, 'label': labels}, 'answerKey': answer_key}


NUMBERED = ["1", "2", "3", "4"]

ARC_EASY_TEST = [
    _arc("Mercury_7012345", "Which of these is a source of light?",
         ["a mirror", "the Moon", "the Sun", "a window"], "C"),
    _arc("NYSEDREGENTS_2013_4_11", "Which tool is used to measure the mass of a rock?",
         ["ruler", "balance", "thermometer", "graduated cylinder"], "2", NUMBERED),
    _arc("MCAS_2004_5_7", "Which of the following animals is a mammal?",
         ["shark", "frog", "whale", "lizard", "salmon"], "C"),
    _arc("Mercury_SC_400123", "What state of matter is ice?", ["solid", "liquid", "gas"], "A"),
    _arc("MDSA_2009_8_32", "A student leaves a glass of water on a sunny windowsill for three days. At the "
         "end of the three days there is less water in the glass. Which process best explains where the water "
         "went?", ["condensation", "evaporation", "precipitation", "freezing"], "B"),
    _arc("Mercury_7099876", "Plants need which gas from the air to make food?",
         ["oxygen", "nitrogen", "helium", "carbon dioxide"], "D"),
]

ARC_EASY_TRAIN = [
    _arc("Mercury_7001001", "Which body part helps a person breathe?", ["lungs", "stomach", "bones", "skin"], "A"),
    _arc("NYSEDREGENTS_2010_4_3", "Which object is attracted to a magnet?",
         ["a wooden spoon", "a rubber ball", "an iron nail", "a glass marble"], "3", NUMBERED),
    _arc("Mercury_SC_401002", "Which of these is a renewable resource?", ["coal", "wind", "oil", "natural gas"], "B"),
    _arc("MCAS_2002_4_9", "What do bees collect from flowers?",
         ["nectar", "sand", "seeds", "leaves", "water"], "A"),
    _arc("Mercury_7002003", "Which season follows winter?", ["spring", "summer", "autumn"], "A"),
    _arc("TIMSS_2007_4_5", "Which unit is used to measure temperature?",
         ["meters", "grams", "degrees Celsius", "liters"], "C"),
    _arc("Mercury_SC_402004", "A ball rolls down a hill. What force pulls it down?",
         ["friction", "magnetism", "gravity", "wind"], "C"),
    _arc("Mercury_7003005", "Which planet is closest to the Sun?", ["Earth", "Mars", "Venus", "Mercury"], "D"),
]

ARC_CHALLENGE_TEST = [
    _arc("Mercury_SC_415733", "Lena rubs two blocks of wood together quickly. Which result is she most likely to "
         "notice?", ["the blocks get warmer", "the blocks get heavier", "the blocks change color",
                     "the blocks become magnetic"], "A"),
    _arc("NYSEDREGENTS_2012_8_21", "Which process in plants releases water vapor into the atmosphere?",
         ["photosynthesis", "transpiration", "germination", "pollination"], "2", NUMBERED),
    _arc("Mercury_7234567", "A scientist finds fossils of sea shells on top of a mountain. What is the best "
         "explanation?", ["Birds carried the shells there.", "The land was once under an ocean.",
                          "People buried the shells.", "The shells grew on the mountain.",
                          "Wind blew the shells uphill."], "B"),
    _arc("MCAS_2006_8_14", "Which property of a mineral can be tested by scratching it with a steel nail?",
         ["hardness", "luster", "color"], "A"),
    _arc("Mercury_SC_416001", "Why does a metal spoon feel colder than a wooden spoon at the same temperature?",
         ["Metal is heavier.", "Metal conducts heat away from the hand faster.", "Wood contains water.",
          "Wood reflects more light."], "B"),
    _arc("ACTAAP_2013_7_4", "Which change is chemical?",
         ["melting butter", "tearing paper", "burning wood", "freezing juice"], "C"),
]

ARC_CHALLENGE_TRAIN = [
    _arc("Mercury_7301001", "Which layer of Earth is made mostly of liquid iron and nickel?",
         ["crust", "mantle", "outer core", "inner core"], "C"),
    _arc("NYSEDREGENTS_2008_8_17", "Which gas makes up most of Earth's atmosphere?",
         ["oxygen", "nitrogen", "carbon dioxide", "argon"], "2", NUMBERED),
    _arc("Mercury_SC_417002", "What is the main function of red blood cells?",
         ["fight infection", "carry oxygen", "clot blood", "digest food", "send signals"], "B"),
    _arc("MCAS_2005_8_3", "Which energy change happens in a battery-powered flashlight?",
         ["chemical to light", "light to sound", "sound to heat"], "A"),
    _arc("Mercury_7302003", "Why do we see different phases of the Moon?",
         ["Earth's shadow covers it", "the Moon changes shape", "we see different parts of its lit half",
          "clouds block it"], "C"),
    _arc("TIMSS_2011_8_12", "Which organism is a producer in a pond food web?",
         ["frog", "algae", "fish", "heron"], "B"),
    _arc("Mercury_SC_418004", "A student heats a sealed can of air. What happens to the pressure inside?",
         ["it increases", "it decreases", "it stays the same", "it becomes zero"], "A"),
    _arc("NYSEDREGENTS_2015_8_28", "Which event is an example of weathering?",
         ["a volcano erupting", "ice cracking a rock", "a river depositing sand", "an earthquake"], "2",
         NUMBERED),
]


# ----------------------------------------------------------------------------- piqa (baber/piqa)

def _piqa(goal, sol1, sol2, label):
    return {'goal': goal, 'sol1': sol1, 'sol2': sol2, 'label': label}


PIQA_VALIDATION = [
    _piqa("How do I keep bread fresh longer?", "Store it in a sealed bag in a cool place.",
          "Leave it open on a sunny windowsill.", 0),
    _piqa("To open a stuck jar lid,", "put the jar in the freezer for an hour.",
          "run the lid under hot water for a minute, then twist.", 1),
    _piqa("Remove a splinter from a finger.", "Use clean tweezers to pull it out in the direction it went in.",
          "Push it deeper with your thumb.", 0),
    _piqa("How can I make my shoes stop squeaking when I walk on a wooden floor at home after they got wet in "
          "the rain?", "Put them in the fridge overnight.",
          "Dry them completely and sprinkle a little baby powder under the insole.", 1),
    _piqa("Cool soup fast.", "Stir it in a wide bowl.", "Cover it with a blanket.", 0),
    _piqa("To hang a picture straight,", "use a level on top of the frame.", "close one eye and guess.", 0),
]

PIQA_TRAIN = [
    _piqa("How do I clean a cast iron pan?", "Soak it in soapy water overnight.",
          "Scrub it with salt and a little oil, then dry it on the stove.", 1),
    _piqa("To sharpen a pencil,", "use a pencil sharpener.", "use a spoon.", 0),
    _piqa("Keep ants out of the kitchen.", "Wipe up crumbs and seal food containers.",
          "Leave honey on the counter.", 0),
    _piqa("How to soften hard butter quickly?", "Grate it into small pieces.", "Put it in the freezer.", 0),
    _piqa("To stop a door from slamming,", "oil the lock.", "stick a felt pad on the frame where it closes.", 1),
    _piqa("How do I fold a fitted sheet?", "Tuck the corners into each other, then fold it into a square.",
          "Roll it into a ball.", 0),
    _piqa("Find a small leak in a bike tire.", "Listen to the tire while it is flat.",
          "Pump it up and dip it in water to look for bubbles.", 1),
    _piqa("To keep a cut apple from browning,", "squeeze lemon juice on it.", "leave it in the sun.", 0),
]


# ----------------------------------------------------------------------- winogrande (allenai/winogrande, winogrande_xl)

def _winogrande(sentence, option1, option2, answer):
    return {'sentence': sentence, 'option1': option1, 'option2': option2, 'answer': answer}


WINOGRANDE_VALIDATION = [
    _winogrande("Nora was a much faster typist than Paula, so _ finished the report first.", "Nora", "Paula", "1"),
    _winogrande("The vase would not fit on the shelf because the _ was too tall.", "vase", "shelf", "1"),
    _winogrande("Kevin lent money to Ryan because _ had lost his wallet.", "Kevin", "Ryan", "2"),
    _winogrande("The ice melted faster on the metal tray than on the wooden board because the _ conducts heat "
                "better, which surprised the children who had guessed the opposite.", "tray", "board", "1"),
    _winogrande("Emma asked Olivia for directions since _ knew the city well.", "Emma", "Olivia", "2"),
    _winogrande("The cat chased the mouse until the _ got tired.", "cat", "mouse", "1"),
]

WINOGRANDE_TRAIN = [
    _winogrande("Carl offered to carry Victor's bags after the trip because _ had a sore back.", "Carl", "Victor",
                "2"),
    _winogrande("The glass broke on the tile but not on the carpet, because the _ is hard.", "tile", "carpet", "1"),
    _winogrande("Lisa taught Megan to swim because _ was an expert swimmer.", "Lisa", "Megan", "1"),
    _winogrande("The plant grew well in the pot but not in the jar because the _ had drainage holes.", "pot", "jar",
                "1"),
    _winogrande("Adam always beat Brian at chess since _ practiced every day.", "Adam", "Brian", "1"),
    _winogrande("The soup was cold but the bread was warm, so the _ had just come out of the oven.", "soup", "bread",
                "2"),
    _winogrande("Jessica called Rachel to apologize because _ had forgotten her birthday.", "Jessica", "Rachel", "1"),
    _winogrande("The book was easier to carry than the lamp because the _ was lighter.", "book", "lamp", "1"),
]


# ----------------------------------------------------------------------------- openbookqa (allenai/openbookqa, main)

def _openbookqa(id, question_stem, texts, answer_key):
    return {'id': id, 'question_stem': question_stem,
            'choices': {'text': texts, 'label': ["A", "B", "C", "D"]}, 'answerKey': answer_key}


OPENBOOKQA_TEST = [
    _openbookqa("8-412", "A family wants to use less electricity at home so that their monthly bill goes down "
                "before winter. After checking which devices run all day, they decide the easiest change is to",
                ["leave the lights on at night", "unplug chargers they are not using", "open the fridge more often",
                 "buy a second television"], "B"),
    _openbookqa("1204", "Melting snow in spring is caused by",
                ["the wind getting louder", "birds flying north", "longer nights", "warmer air from more sunlight"],
                "D"),
    _openbookqa("915", "When a seed is planted in wet soil",
                ["it turns into a rock", "it dries out right away", "it may begin to sprout", "it becomes a cloud"],
                "C"),
    _openbookqa("7-1031", "Which of these carries electricity best?",
                ["a wool sock", "a copper wire", "a rubber band", "a paper cup"], "B"),
    _openbookqa("9-743", "Rain is", ["water falling from clouds", "dust", "sand", "smoke"], "A"),
    _openbookqa("7-1095", "An example of a magnet attracting something is",
                ["a fridge door holding a note with a magnetic clip", "a cat sleeping in the sun",
                 "a ball rolling down a hill", "a kite flying"], "A"),
]

OPENBOOKQA_TRAIN = [
    _openbookqa("7-962", "Sunlight gives plants the energy they need for",
                ["puppies", "growing", "stone", "glass"], "B"),
    _openbookqa("7-584", "Animals that eat only plants are called",
                ["carnivores", "herbivores", "omnivores", "decomposers"], "B"),
    _openbookqa("9-1163", "A magnet will stick to", ["a wooden table", "a plastic cup", "a steel door", "a glass"],
                "C"),
    _openbookqa("8-376", "Which is a way to conserve water?",
                ["taking longer showers", "fixing leaky faucets", "watering lawns at noon", "washing half loads"],
                "B"),
    _openbookqa("1577", "Shadows are longest", ["at noon", "in the early morning", "at midnight", "never"], "B"),
    _openbookqa("9-732", "Sound travels fastest through", ["air", "a vacuum", "steel", "foam"], "C"),
    _openbookqa("7-1186", "Seeds are often spread by", ["rocks", "animals", "clouds", "metal"], "B"),
    _openbookqa("8-121", "A thermometer measures", ["weight", "length", "temperature", "speed"], "C"),
]


# ----------------------------------------------------------------------------- boolq (aps/super_glue, boolq)

def _boolq(question, passage, idx, label):
    # questions are lower case with no question mark, as on the hub; label 0 is False, 1 is True
    return {'question': question, 'passage': passage, 'idx': idx, 'label': label}


BOOLQ_VALIDATION = [
    _boolq("is the moon bigger than the earth",
           "Moon -- The Moon is Earth's only natural satellite. Its diameter is about a quarter of Earth's, "
           "making it the fifth largest satellite in the Solar System.", 0, 0),
    _boolq("do penguins live in the north pole",
           "Penguin -- Penguins are a group of flightless birds that live almost exclusively in the Southern "
           "Hemisphere. Only one species is found north of the equator, near the Galapagos Islands.", 1, 0),
    _boolq("is a tomato a fruit",
           "Tomato -- Botanically, a tomato is a fruit, a berry formed from the ovary of a flowering plant. In "
           "cooking it is usually treated as a vegetable.", 2, 1),
    _boolq("can you see the great wall of china from space with the naked eye",
           "Great Wall of China -- A common claim holds that the wall can be seen from the Moon. Astronauts have "
           "said it is hard to make out even from low orbit, because it is narrow and close in color to the "
           "land around it. Under ideal conditions some parts may be seen from low orbit, but not from the "
           "Moon.", 3, 0),
    _boolq("is water wet", "Wetness -- Water makes things wet.", 4, 1),
    _boolq("does a leap year have 366 days",
           "Leap year -- A leap year contains one extra day, February 29, giving it 366 days instead of 365.",
           5, 1),
]

BOOLQ_TRAIN = [
    _boolq("do spain and mexico speak the same language",
           "Spanish language -- Spanish is the official language of Spain, and it is also the most widely spoken "
           "language of Mexico.", 0, 1),
    _boolq("is the sun a star", "Sun -- The Sun is the star at the center of the Solar System.", 1, 1),
    _boolq("can fish breathe air",
           "Fish -- Most fish breathe through gills, taking oxygen from water. A few, such as lungfish, can also "
           "breathe air.", 2, 1),
    _boolq("is mount everest in africa",
           "Mount Everest -- Mount Everest is in the Himalayas, on the border between Nepal and China.", 3, 0),
    _boolq("do spiders have six legs", "Spider -- Spiders are arachnids with eight legs.", 4, 0),
    _boolq("is gold a metal", "Gold -- Gold is a dense, soft, yellow metal.", 5, 1),
    _boolq("does the pacific ocean border europe",
           "Pacific Ocean -- The Pacific lies between Asia and Australia to the west and the Americas to the "
           "east.", 6, 0),
    _boolq("is a bat a bird", "Bat -- Bats are mammals; they are the only mammals capable of true flight.", 7, 0),
]


# ----------------------------------------------------------------------------- copa (aps/super_glue, copa)

def _copa(premise, choice1, choice2, question, idx, label):
    return {'premise': premise, 'choice1': choice1, 'choice2': choice2, 'question': question, 'idx': idx,
            'label': label}


COPA_VALIDATION = [
    _copa("The boy pressed the light switch.", "The window opened.", "The room lit up.", "effect", 0, 1),
    _copa("The baker burned the bread.", "She added more flour.", "She threw the loaf away.", "effect", 1, 1),
    _copa("The street was wet.", "It had rained during the night.", "The shops had closed early.", "cause", 2, 0),
    _copa("The old man kept walking to the park every morning for many years, even after his knees began to ache.",
          "He loved watching the ducks on the pond.", "He wanted to sell his walking stick.", "cause", 3, 0),
    _copa("I dropped the egg.", "The egg turned into a chick.", "The egg cracked on the floor.", "effect", 4, 1),
    _copa("Anna wore a heavy coat.", "It was freezing outside.", "Her coat was new.", "cause", 5, 0),
]

COPA_TRAIN = [
    _copa("The kettle whistled.", "The water was boiling.", "The cups were clean.", "cause", 0, 0),
    _copa("The boy broke his leg.", "His friends went to the beach.", "He walked with crutches for a month.",
          "effect", 1, 1),
    _copa("The lake froze over.", "Children skated on the lake.", "Children swam in the lake.", "effect", 2, 0),
    _copa("I rang the doorbell.", "My neighbor opened the door.", "My neighbor painted the fence.", "effect", 3, 0),
    _copa("The child became ill.", "He ate a lot of vegetables.", "He caught a cold at school.", "cause", 4, 1),
    _copa("I ran out of breath.", "I climbed several flights of stairs.", "I stayed in bed all day.",
          "cause", 5, 0),
    _copa("The lamp went dark.", "The bulb burned out.", "I bought a new lamp.", "cause", 6, 0),
    _copa("Tom forgot his umbrella.", "He stayed dry.", "He got soaked in the rain.", "effect", 7, 1),
]


# ----------------------------------------------------------------------------- sciq (allenai/sciq)

def _sciq(question, distractor3, distractor1, distractor2, correct_answer, support):
    return {'question': question, 'distractor3': distractor3, 'distractor1': distractor1,
            'distractor2': distractor2, 'correct_answer': correct_answer, 'support': support}


SCIQ_TEST = [
    _sciq("What kind of organism turns milk into yogurt?", "viruses", "algae", "mosses", "bacteria",
          "Yogurt is made by adding bacteria to warm milk. The bacteria feed on the sugar in the milk and produce "
          "an acid that thickens it and gives it a sour taste. The warmer the milk, within limits, the faster "
          "this happens."),
    _sciq("Which layer of the atmosphere contains most of the weather?", "mesosphere", "stratosphere",
          "thermosphere", "troposphere",
          "  The troposphere is the lowest layer of the atmosphere. Almost all clouds, rain and snow form there, "
          "so it is where most weather happens."),
    _sciq("What is the process by which plants make food using sunlight?", "respiration", "digestion",
          "fermentation", "photosynthesis", ""),
    _sciq("Which organ pumps blood through the body?", "lungs", "liver", "kidney", "heart",
          "\nThe heart is a muscular organ that pumps blood through the blood vessels of the circulatory system."),
    _sciq("What force keeps planets in orbit around the sun?", "friction", "magnetism", "tension", "gravity",
          "Gravity is the force of attraction between masses."),
    _sciq("What is the chemical symbol for water?", "CO2", "O2", "NaCl", "H2O", ""),
]

SCIQ_TRAIN = [
    _sciq("What are the tiny sacs in the lungs where gas exchange takes place called?", "bronchi", "trachea",
          "villi", "alveoli",
          "Air travels down the bronchi into tiny sacs called alveoli, where oxygen passes into the blood."),
    _sciq("What is the center of an atom called?", "electron", "shell", "orbital", "nucleus",
          " The nucleus is the small, dense center of an atom, made of protons and neutrons."),
    _sciq("What do we call animals that are active at night?", "diurnal", "migratory", "dormant", "nocturnal", ""),
    _sciq("What gas do plants give off during photosynthesis?", "nitrogen", "carbon dioxide", "helium", "oxygen",
          "During photosynthesis plants take in carbon dioxide and release oxygen."),
    _sciq("What is the boiling point of water at sea level in degrees Celsius?", "50", "90", "212", "100",
          "Water boils at 100 degrees Celsius at sea level."),
    _sciq("Which part of the cell contains the genetic material?", "cell wall", "ribosome", "vacuole", "nucleus",
          "   The nucleus holds the cell's DNA."),
    _sciq("What type of rock forms from cooled lava?", "sedimentary", "metamorphic", "limestone", "igneous", ""),
    _sciq("What is the unit of electrical resistance?", "volt", "ampere", "watt", "ohm",
          "Resistance is measured in ohms."),
]


# ----------------------------------------------------------------------- triviaqa (mandarjoshi/trivia_qa, rc.nocontext)

def _triviaqa(question, question_id, question_source, value, aliases, normalized_aliases, normalized_value,
              type='WikipediaEntity', matched_wiki_entity_name='', normalized_matched_wiki_entity_name=''):
    # rc.nocontext keeps the entity_pages and search_results columns with their contexts dropped: empty here
    return {'question': question, 'question_id': question_id, 'question_source': question_source,
            'entity_pages': {'doc_source': [], 'filename': [], 'title': [], 'wiki_context': []},
            'search_results': {'description': [], 'filename': [], 'rank': [], 'title': [], 'url': [],
                               'search_context': []},
            'answer': {'aliases': aliases, 'normalized_aliases': normalized_aliases,
                       'matched_wiki_entity_name': matched_wiki_entity_name,
                       'normalized_matched_wiki_entity_name': normalized_matched_wiki_entity_name,
                       'normalized_value': normalized_value, 'type': type, 'value': value}}


TRIVIAQA_VALIDATION = [
    _triviaqa("Which planet is known as the Red Planet?", "tc_101", "http://www.triviacountry.com/", "Mars",
              ["Mars", "MARS", "The Red Planet", "Mars (planet)", "Planet Mars"],
              ["mars", "red planet", "mars planet", "planet mars"], "mars"),
    _triviaqa("Who wrote the novel Pride and Prejudice", "qw_2045", "http://www.quizwise.com/", "Jane Austen",
              ["Jane Austen", "Austen, Jane", "JANE AUSTEN", "Jane Austin", "J. Austen"],
              ["jane austen", "austen jane", "jane austin", "j austen"], "jane austen"),
    _triviaqa("In which country is the city of Timbuktu?", "sfq_3310", "http://www.sfquiz.org.uk/", "Mali",
              ["Mali", "Republic of Mali", "Mali, Africa", "République du Mali"],
              ["mali", "republic of mali", "mali africa", "république du mali"], "mali",
              matched_wiki_entity_name="Mali", normalized_matched_wiki_entity_name="mali"),
    _triviaqa("How many sides does a hexagon have?", "bt_4521", "http://www.businessballs.com/", "6",
              ["6", "six", "Six"], ["6", "six"], "6", type='Numerical'),
    _triviaqa("What is the name of the fictional detective created by Sir Arthur Conan Doyle who lived at 221B "
              "Baker Street in London?", "odql_812", "http://www.odquiz.org.uk/", "Sherlock Holmes",
              ["Sherlock Holmes", "Holmes", "Sherlock holmes", "Mr. Sherlock Holmes", "Sherlock Holmes (character)"],
              ["sherlock holmes", "holmes", "mr sherlock holmes", "sherlock holmes character"], "sherlock holmes"),
    _triviaqa("Which metal has the symbol Fe", "qz_77", "http://www.quiz-zone.co.uk/", "Iron",
              ["Iron", "Fe", "IRON", "Iron (element)"], ["iron", "fe", "iron element"], "iron"),
]

TRIVIAQA_TRAIN = [
    _triviaqa("Which ocean lies between Africa and Australia?", "tc_5", "http://www.triviacountry.com/",
              "Indian Ocean", ["Indian Ocean", "The Indian Ocean", "Indian ocean", "INDIAN OCEAN"],
              ["indian ocean"], "indian ocean"),
    _triviaqa("Who painted the Mona Lisa?", "qw_12", "http://www.quizwise.com/", "Leonardo da Vinci",
              ["Leonardo da Vinci", "Leonardo Da Vinci", "Da Vinci", "Leonardo", "Leonardo di ser Piero da Vinci"],
              ["leonardo da vinci", "da vinci", "leonardo", "leonardo di ser piero da vinci"], "leonardo da vinci"),
    _triviaqa("What is the capital city of Canada", "sfq_88", "http://www.sfquiz.org.uk/", "Ottawa",
              ["Ottawa", "Ottawa, Ontario", "OTTAWA", "Bytown"], ["ottawa", "ottawa ontario", "bytown"], "ottawa"),
    _triviaqa("How many players are on a football (soccer) team on the pitch?", "bt_301",
              "http://www.businessballs.com/", "11", ["11", "eleven", "Eleven"], ["11", "eleven"], "11",
              type='Numerical'),
    _triviaqa("Which band recorded the album Abbey Road?", "jp_45", "http://www.jetpunk.com/", "The Beatles",
              ["The Beatles", "Beatles", "the beatles", "The Fab Four", "Beatles, The"],
              ["beatles", "fab four"], "beatles"),
    _triviaqa("What is the largest mammal in the world?", "wh_19", "http://www.wrexhamquiz.co.uk/", "Blue whale",
              ["Blue whale", "Blue Whale", "Balaenoptera musculus", "Blue whales"],
              ["blue whale", "balaenoptera musculus", "blue whales"], "blue whale",
              matched_wiki_entity_name="Blue whale", normalized_matched_wiki_entity_name="blue whale"),
    _triviaqa("In which year did the Titanic sink?", "qb_230", "http://www.quizballs.com/", "1912",
              ["1912", "one thousand nine hundred and twelve"], ["1912", "one thousand nine hundred and twelve"],
              "1912", type='Numerical'),
    _triviaqa("What is the chemical symbol for gold", "odql_64", "http://www.odquiz.org.uk/", "Au",
              ["Au", "AU", "au", "Au."], ["au"], "au", type='FreeForm'),
]


# ----------------------------------------------------------------------------- gsm8k (openai/gsm8k, main)

def _gsm8k(question, answer):
    return {'question': question, 'answer': answer}


GSM8K_TEST = [
    _gsm8k("Janet has 3 apples. She buys 5 more. How many apples does she have now?",
           "Janet has 3 + 5 = <<3+5=8>>8 apples.\n#### 8"),
    _gsm8k("A baker makes 24 muffins and sells half of them in the morning. In the afternoon he sells 4 more. "
           "How many muffins are left?",
           "He sells 24 / 2 = <<24/2=12>>12 muffins in the morning.\nThat leaves 24 - 12 = <<24-12=12>>12 muffins."
           "\nAfter the afternoon he has 12 - 4 = <<12-4=8>>8 muffins left.\n#### 8"),
    _gsm8k("Tom reads 15 pages a day. How many pages does he read in 2 weeks?",
           "Two weeks have 2 * 7 = <<2*7=14>>14 days.\nHe reads 15 * 14 = <<15*14=210>>210 pages.\n#### 210"),
    _gsm8k("A shirt costs $20. It is on sale for 25% off. What is the sale price?",
           "The discount is 20 * 0.25 = $<<20*0.25=5>>5.\nThe sale price is 20 - 5 = $<<20-5=15>>15.\n#### 15"),
    _gsm8k("Maria saves $1,200 a month. How much does she save in a year?",
           "She saves 1200 * 12 = $<<1200*12=14400>>14,400 in a year.\n#### 14400"),
    _gsm8k("A train travels at 60 miles per hour for 3 hours and then at 40 miles per hour for 2 hours. Sam "
           "says the train went 250 miles in all. How many miles did it actually travel?",
           "First it travels 60 * 3 = <<60*3=180>>180 miles.\nThen it travels 40 * 2 = <<40*2=80>>80 miles.\n"
           "In all it travels 180 + 80 = <<180+80=260>>260 miles.\n#### 260"),
]

GSM8K_TRAIN = [
    _gsm8k("Omar picked 36 strawberries on Monday, and then he picked a third as many on Tuesday. How many "
           "strawberries did Omar pick on the two days together?",
           "Omar picked 36/3 = <<36/3=12>>12 strawberries on Tuesday.\nOmar picked 36+12 = <<36+12=48>>48 "
           "strawberries on the two days together.\n#### 48"),
    _gsm8k("A box holds 6 eggs. How many eggs are in 7 boxes?", "There are 6 * 7 = <<6*7=42>>42 eggs.\n#### 42"),
    _gsm8k("Ben has 50 marbles and gives 18 to his sister. How many does he keep?",
           "He keeps 50 - 18 = <<50-18=32>>32 marbles.\n#### 32"),
    _gsm8k("A pizza is cut into 8 slices. If 3 friends each eat 2 slices, how many slices are left?",
           "They eat 3 * 2 = <<3*2=6>>6 slices.\nThere are 8 - 6 = <<8-6=2>>2 slices left.\n#### 2"),
    _gsm8k("Lily earns $12 an hour. How much does she earn in a 5-hour shift?",
           "She earns 12 * 5 = $<<12*5=60>>60.\n#### 60"),
    _gsm8k("A garden has 4 rows of 9 tomato plants. How many tomato plants are there?",
           "There are 4 * 9 = <<4*9=36>>36 plants.\n#### 36"),
    _gsm8k("A car uses 5 liters of fuel per 100 km. How much fuel does it use for 300 km?",
           "300 km is 300 / 100 = <<300/100=3>>3 times 100 km.\nIt uses 5 * 3 = <<5*3=15>>15 liters.\n#### 15"),
    _gsm8k("Sam had 120 stickers. He gave a quarter to Ann and 10 to Joe. How many stickers does Sam have left?",
           "He gave Ann 120 / 4 = <<120/4=30>>30 stickers.\nHe gave away 30 + 10 = <<30+10=40>>40 in all.\nSam "
           "has 120 - 40 = <<120-40=80>>80 stickers left.\n#### 80"),
]


# ----------------------------------------------------------------------------- the index

TASKS = {
    'hellaswag': {'path': 'Rowan/hellaswag', 'name': None,
                  'splits': {'validation': HELLASWAG_VALIDATION, 'train': HELLASWAG_TRAIN}},
    'lambada_openai': {'path': 'EleutherAI/lambada_openai', 'name': 'default', 'splits': {'test': LAMBADA_TEST}},
    'arc_easy': {'path': 'allenai/ai2_arc', 'name': 'ARC-Easy',
                 'splits': {'test': ARC_EASY_TEST, 'train': ARC_EASY_TRAIN}},
    'arc_challenge': {'path': 'allenai/ai2_arc', 'name': 'ARC-Challenge',
                      'splits': {'test': ARC_CHALLENGE_TEST, 'train': ARC_CHALLENGE_TRAIN}},
    'piqa': {'path': 'baber/piqa', 'name': None, 'splits': {'validation': PIQA_VALIDATION, 'train': PIQA_TRAIN}},
    'winogrande': {'path': 'allenai/winogrande', 'name': 'winogrande_xl',
                   'splits': {'validation': WINOGRANDE_VALIDATION, 'train': WINOGRANDE_TRAIN}},
    'openbookqa': {'path': 'allenai/openbookqa', 'name': 'main',
                   'splits': {'test': OPENBOOKQA_TEST, 'train': OPENBOOKQA_TRAIN}},
    'boolq': {'path': 'aps/super_glue', 'name': 'boolq',
              'splits': {'validation': BOOLQ_VALIDATION, 'train': BOOLQ_TRAIN}},
    'copa': {'path': 'aps/super_glue', 'name': 'copa', 'splits': {'validation': COPA_VALIDATION, 'train': COPA_TRAIN}},
    'sciq': {'path': 'allenai/sciq', 'name': None, 'splits': {'test': SCIQ_TEST, 'train': SCIQ_TRAIN}},
    'triviaqa': {'path': 'mandarjoshi/trivia_qa', 'name': 'rc.nocontext',
                 'splits': {'validation': TRIVIAQA_VALIDATION, 'train': TRIVIAQA_TRAIN}},
    'gsm8k': {'path': 'openai/gsm8k', 'name': 'main', 'splits': {'test': GSM8K_TEST, 'train': GSM8K_TRAIN}},
}


def write(root, tasks=None):
    """Write root/<task>/<split>.jsonl for each task (all of them if tasks is None); returns {task: folder}."""
    root = pathlib.Path(root)
    folders = {}
    for task in (TASKS if tasks is None else tasks):
        folder = root / task
        folder.mkdir(parents=True, exist_ok=True)
        for split, rows in TASKS[task]['splits'].items():
            text = ''.join(json.dumps(row, ensure_ascii=False) + '\n' for row in rows)
            (folder / f"{split}.jsonl").write_text(text, encoding='utf-8')
        folders[task] = folder
    return folders
